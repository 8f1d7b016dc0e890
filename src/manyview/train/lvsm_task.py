"""LVSM / Efficient-LVSM training: the data, the loss and the presets, on the shared trainer.

A sample is one scene's views along a trajectory, chosen as the released loaders do (reference/lvsm.md §1.5): a
window of ``min_frame_dist`` .. ``max_frame_dist`` frames whose first and last frames are the inputs (extra inputs,
if any, are drawn inside the window), and targets drawn from the window's frames (inputs included when
``target_has_input``). All selected cameras together are normalised with :func:`normalize_poses` (average-camera
frame, scaled by 1.35 x max |t|). Two sources give the same sample format:

- ``synth``: procedural scenes from :mod:`manyview.synth` (object orbits and room walkthroughs), rendered at the
  training size with exact cameras; training scene seeds are ``[0, num_scenes)``, held-out evaluation scenes
  start at :data:`~manyview.synth.samples.EVAL_SEED_START` (shared with the other training tasks);
- ``re10k``: a RealEstate10K chunk folder (pixelSplat layout), frames LANCZOS-resized to cover the training size
  and centre-cropped.

Sample (per item; the trainer's collate adds the batch axis)::

    input_images (Vi, 3, S, S) in [0, 1]   input_fxfycxcy (Vi, 4) px   input_c2w (Vi, 4, 4)
    target_images (Vt, 3, S, S)            target_fxfycxcy (Vt, 4)     target_c2w (Vt, 4, 4)

Loss: ``l2_weight * MSE + perceptual_weight * VGG-19 loss`` (1.0 and 0.5 as released); without VGG-19 weights on
disk the perceptual term is dropped with a warning. Train with::

    manyview train lvsm bundled --out runs/lvsm_bundled
    manyview train efficient-lvsm bundled --out runs/efficient_lvsm_bundled

``out_dir/final`` is then a model folder (config.json + model.safetensors) that ``load_lvsm`` and
``manyview nvs --weights`` read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.geometry.poses import normalize_poses
from manyview.models.lvsm_config import CONFIGS, LVSMConfig
from manyview.models.lvsm_family import build_model
from manyview.synth.samples import EVAL_SEED_START, trajectory_frames
from manyview.train.config import OptimConfig, ScheduleConfig, TrainConfig
from manyview.train.task import indexed_stream

Variant = Literal["lvsm", "efficient-lvsm"]
PresetName = Literal["tiny", "bundled"]


@dataclass
class LVSMDataConfig:
    """Where samples come from and how views are chosen."""

    source: Literal["synth", "re10k"] = "synth"
    root: Path | None = None
    """RealEstate10K chunk folder (``source='re10k'``)."""
    image_size: int = 64
    """Square training size S (a multiple of the model's patch size)."""
    num_input_views: int = 2
    num_target_views: int = 4
    target_has_input: bool = True
    """Targets may include the input frames (as the released training configs do)."""
    min_frame_dist: int = 4
    """Shortest window, in frames, between the first and the last input (RE10K release: 25)."""
    max_frame_dist: int = 15
    """Longest window (RE10K release: 192); clamped to the scene's length."""
    scene_scale_factor: float = 1.35
    # synthetic scenes
    kinds: tuple[Literal["object", "room"], ...] = ("object", "room")
    """Scene kinds, alternating with the seed."""
    num_scenes: int = 2000
    """Training scene seeds are [0, num_scenes)."""
    frames: int = 16
    """Frames rendered along each scene's trajectory."""
    orbit_arc_deg: float = 90.0
    """Object scenes: the arc the trajectory's frames span."""
    supersample: int = 2
    cache_scenes: int = 2000
    """Rendered trajectories kept in memory (uint8) per data process; 0 renders every sample afresh."""
    # RealEstate10K
    samples_per_chunk: int = 256
    """Consecutive samples drawn from one chunk before moving to the next (chunks are ~100 MB)."""
    num_workers: int = 0
    """DataLoader worker processes (0: in the training process)."""

    def check(self, patch_size: int) -> None:
        if self.image_size < patch_size or self.image_size % patch_size:
            raise ManyviewError(f"image_size {self.image_size} must be a positive multiple of the patch size "
                                f"{patch_size}")
        if self.num_input_views < 1 or self.num_target_views < 1:
            raise ManyviewError("num_input_views and num_target_views must be at least 1")
        if not 1 <= self.min_frame_dist <= self.max_frame_dist:
            raise ManyviewError(f"need 1 <= min_frame_dist <= max_frame_dist, got {self.min_frame_dist} and "
                                f"{self.max_frame_dist}")
        if self.source == "synth":
            if not 0 < self.num_scenes <= EVAL_SEED_START:
                raise ManyviewError(f"num_scenes must be in [1, {EVAL_SEED_START}] so training never sees the "
                                    f"held-out evaluation seeds")
            if self.frames < 2:
                raise ManyviewError(f"frames must be at least 2, got {self.frames}")
            if not self.kinds:
                raise ManyviewError("kinds must name at least one scene kind")
        elif self.root is None:
            raise ManyviewError("source 're10k' needs root: a RealEstate10K chunk folder")


@dataclass
class LVSMTaskConfig:
    """The model to train, its data and its loss."""

    model: LVSMConfig = CONFIGS["lvsm-tiny"]
    """Architecture (variant decoder_only / encoder_decoder / efficient, width, depth, patch, training size)."""
    data: LVSMDataConfig = field(default_factory=LVSMDataConfig)
    l2_weight: float = 1.0
    perceptual_weight: float = 0.5
    """Weight of the VGG-19 loss (used only when VGG-19 weights are found)."""
    vgg_weights: Path | None = None
    """VGG-19 weight file (MatConvNet .mat, torchvision .pth / .safetensors); default $MANYVIEW_VGG19_WEIGHTS."""


# --------------------------------------------------------------------------------------------- view selection
def choose_frames(num_frames: int, data: LVSMDataConfig, g: torch.Generator) -> tuple[list[int], list[int]]:
    """Frame indices of the inputs (window ends first) and the targets, for a scene of ``num_frames`` frames."""
    if num_frames < 1:
        raise ManyviewError("a scene without frames cannot be sampled")
    longest = num_frames - 1
    lo, hi = min(data.min_frame_dist, longest), min(data.max_frame_dist, longest)
    span = int(torch.randint(lo, hi + 1, (), generator=g))
    start = int(torch.randint(0, num_frames - span, (), generator=g))
    window = list(range(start, start + span + 1))
    inputs = [start] if data.num_input_views == 1 or span == 0 else [start, start + span]
    inner = window[1:-1]
    while len(inputs) < data.num_input_views:  # extra inputs inside the window (repeats once it is exhausted)
        pool = [f for f in inner if f not in inputs] or window
        inputs.append(pool[int(torch.randint(len(pool), (), generator=g))])
    pool = window if data.target_has_input else [f for f in window if f not in inputs] or window
    if len(pool) >= data.num_target_views:
        order = torch.randperm(len(pool), generator=g)[: data.num_target_views]
    else:
        order = torch.randint(len(pool), (data.num_target_views,), generator=g)
    return inputs, [pool[int(i)] for i in order]


def make_sample(images: Tensor, fxfycxcy: Tensor, c2w: Tensor, inputs: list[int], targets: list[int],
                scale_factor: float) -> dict[str, Tensor]:
    """Frames (F, 3, S, S) (float, or uint8 0-255) with cameras -> a training sample, poses normalised together."""
    idx = inputs + targets
    imgs = images[idx]
    imgs = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
    poses = normalize_poses(c2w[idx].double(), scale_factor).float()
    k, f = len(inputs), fxfycxcy[idx].float()
    return {"input_images": imgs[:k], "input_fxfycxcy": f[:k], "input_c2w": poses[:k],
            "target_images": imgs[k:], "target_fxfycxcy": f[k:], "target_c2w": poses[k:]}


# --------------------------------------------------------------------------------------------- sources
def synthetic_trajectory(seed: int, data: LVSMDataConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Scene ``seed`` rendered along its trajectory -> uint8 images (F, 3, S, S), fxfycxcy (F, 4), c2w (F, 4, 4)."""
    return trajectory_frames(seed, data.kinds, data.frames, data.image_size, data.supersample, data.orbit_arc_deg)


class SyntheticSource:
    """Samples from procedural scenes; rendered trajectories are kept in a bounded LRU cache."""

    def __init__(self, data: LVSMDataConfig):
        self.data = data
        self._cache: OrderedDict[int, tuple[Tensor, Tensor, Tensor]] = OrderedDict()

    def trajectory(self, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        if seed in self._cache:
            self._cache.move_to_end(seed)
            return self._cache[seed]
        out = synthetic_trajectory(seed, self.data)
        if self.data.cache_scenes > 0:
            self._cache[seed] = out
            while len(self._cache) > self.data.cache_scenes:
                self._cache.popitem(last=False)
        return out

    def sample(self, index: int, g: torch.Generator) -> dict[str, Tensor]:
        seed = int(torch.randint(self.data.num_scenes, (), generator=g))
        images, fxfycxcy, c2w = self.trajectory(seed)
        inputs, targets = choose_frames(images.shape[0], self.data, g)
        return make_sample(images, fxfycxcy, c2w, inputs, targets, self.data.scene_scale_factor)


class RE10KSource:
    """Samples from a RealEstate10K chunk folder: ``samples_per_chunk`` consecutive samples per chunk, in order."""

    def __init__(self, data: LVSMDataConfig):
        from manyview.io.images import ImageLoadPolicy, natural_key

        self.data = data
        root = Path(data.root)
        self.chunks = sorted(root.glob("*.torch"), key=lambda p: natural_key(p.name)) if root.is_dir() else []
        if not self.chunks:
            raise ManyviewError("no .torch chunks here: expected a RealEstate10K chunk folder", root)
        self.policy = ImageLoadPolicy(size=(data.image_size, data.image_size), crop="center", resample="lanczos")
        self._cache: OrderedDict[Path, list] = OrderedDict()

    def chunk(self, path: Path) -> list:
        from manyview.io.realestate10k import read_chunk

        if path not in self._cache:
            self._cache[path] = read_chunk(path)
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        self._cache.move_to_end(path)
        return self._cache[path]

    def sample(self, index: int, g: torch.Generator) -> dict[str, Tensor]:
        path = self.chunks[(index // self.data.samples_per_chunk) % len(self.chunks)]
        scenes = self.chunk(path)
        if not scenes:
            raise ManyviewError("chunk holds no scenes", path)
        need = 2 if self.data.num_input_views > 1 else 1
        for _ in range(32):  # skip scenes too short for a window
            scene = scenes[int(torch.randint(len(scenes), (), generator=g))]
            if len(scene) >= need:
                break
        else:
            raise ManyviewError(f"no scene with at least {need} frames found in this chunk", path)
        inputs, targets = choose_frames(len(scene), self.data, g)
        frames = sorted(set(inputs + targets))
        views = scene.views(frames, self.policy, source=str(path))
        pos = {f: i for i, f in enumerate(frames)}
        return make_sample(views.images, views.cameras.fxfycxcy, views.cameras.c2w,
                           [pos[f] for f in inputs], [pos[f] for f in targets], self.data.scene_scale_factor)


# --------------------------------------------------------------------------------------------- the task
class LVSMTask:
    """:class:`~manyview.train.TrainTask` for the LVSM family (decoder-only, encoder-decoder, Efficient-LVSM)."""

    def __init__(self, cfg: LVSMTaskConfig | None = None):
        from manyview.train.perceptual import perceptual_loss_or_none

        self.cfg = cfg or LVSMTaskConfig()
        self.cfg.data.check(self.cfg.model.patch_size)
        self.source = SyntheticSource(self.cfg.data) if self.cfg.data.source == "synth" else RE10KSource(self.cfg.data)
        self.perceptual = perceptual_loss_or_none(self.cfg.vgg_weights) if self.cfg.perceptual_weight > 0 else None

    def sample(self, index: int, g: torch.Generator) -> dict[str, Tensor]:
        return self.source.sample(index, g)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    def make_stream(self, rank: int, world: int, seed: int, micro_batch: int, start: int) -> Iterable:
        return indexed_stream(self.sample, rank, world, seed, micro_batch, start, num_workers=self.cfg.data.num_workers)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        pred = model(batch["input_images"], batch["input_fxfycxcy"], batch["input_c2w"], batch["target_fxfycxcy"],
                     batch["target_c2w"]).float()  # (B, Vt, 3, S, S)
        target = batch["target_images"]
        per_image = (pred - target).square().flatten(2).mean(-1)  # (B, Vt)
        mse = per_image.mean()
        total = self.cfg.l2_weight * mse
        metrics = {"mse": mse.detach(), "psnr": (-10 * torch.log10(per_image.detach().clamp_min(1e-10))).mean()}
        if self.perceptual is not None:
            self.perceptual.to(pred.device)
            perceptual = self.perceptual(pred, target)
            total = total + self.cfg.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual.detach()
        return total, metrics

    def save_weights(self, state_dict: dict[str, Tensor], directory: Path) -> None:
        """config.json + model.safetensors with the released key names (``save_pretrained``)."""
        build_model(self.cfg.model).load_tensors(state_dict, path=directory).save_pretrained(directory)


# --------------------------------------------------------------------------------------------- presets
@dataclass
class LVSMRun:
    """A training run: the trainer's config and the task's (what a preset returns)."""

    train: TrainConfig
    task: LVSMTaskConfig


# Bundled models: sized for 2 CPU cores. 32 x 32 renders in 4 x 4 patches (64 tokens per view), width 128, eight
# transformer blocks in all (LVSM: 8 decoder blocks; Efficient-LVSM: 4 input-stream + 4 target-stream blocks), so the
# two compare at equal width and depth; ~6 MB of float32 each. A 64 x 64, width-256 recipe was estimated at 13 h
# (LVSM) / 5.5 h (Efficient-LVSM) of these cores. This recipe is 3000 steps: ~20 min for Efficient-LVSM (0.35 s a
# step) and ~50 min for LVSM (1 s a step: every target re-attends to all input tokens). Resume with
# `--train.resume True`.
BUNDLED_MODELS: dict[Variant, LVSMConfig] = {
    "lvsm": LVSMConfig("decoder_only", d=128, d_head=32, n_layer=8, image_size=32, patch_size=4),
    "efficient-lvsm": LVSMConfig("efficient", d=128, d_head=32, n_layer=4, image_size=32, patch_size=4),
}
TINY_MODELS: dict[Variant, LVSMConfig] = {"lvsm": CONFIGS["lvsm-tiny"],
                                          "efficient-lvsm": CONFIGS["efficient-lvsm-tiny"]}


def preset(variant: Variant, name: PresetName = "bundled") -> LVSMRun:
    """The training run of a preset: ``tiny`` (seconds on a CPU; tests) or ``bundled`` (the shipped models)."""
    if variant not in BUNDLED_MODELS:
        raise ManyviewError(f"unknown LVSM variant {variant!r}; expected 'lvsm' or 'efficient-lvsm'")
    slug = variant.replace("-", "_")
    if name == "tiny":
        data = LVSMDataConfig(image_size=32, num_target_views=2, min_frame_dist=2, max_frame_dist=7, frames=8,
                              num_scenes=64, supersample=1, cache_scenes=64)
        train = TrainConfig(out_dir=Path(f"runs/{slug}_tiny"), steps=40, batch_size=4,
                            optim=OptimConfig(lr=1e-3, weight_decay=0.05, grad_clip=1.0),
                            schedule=ScheduleConfig(warmup_steps=5), log_every=5, ckpt_every=40, keep_last=1)
        return LVSMRun(train, LVSMTaskConfig(model=TINY_MODELS[variant], data=data))
    if name == "bundled":
        # 2000 scenes are rendered once (~0.1 s each at 32 x 32) and then served from memory (~100 MB of uint8)
        data = LVSMDataConfig(image_size=32, num_target_views=4, min_frame_dist=4, max_frame_dist=15, frames=16,
                              num_scenes=2000, supersample=2, cache_scenes=2000)
        train = TrainConfig(out_dir=Path(f"runs/{slug}_bundled"), steps=3000, batch_size=8,
                            optim=OptimConfig(lr=1e-3, weight_decay=0.05, grad_clip=1.0),
                            schedule=ScheduleConfig(warmup_steps=200, min_lr=1e-5), log_every=20, ckpt_every=100,
                            keep_last=2)
        return LVSMRun(train, LVSMTaskConfig(model=BUNDLED_MODELS[variant], data=data))
    raise ManyviewError(f"unknown preset {name!r}; expected 'tiny' or 'bundled'")


__all__ = ["BUNDLED_MODELS", "EVAL_SEED_START", "LVSMDataConfig", "LVSMRun", "LVSMTask", "LVSMTaskConfig",
           "RE10KSource", "SyntheticSource", "TINY_MODELS", "choose_frames", "make_sample", "preset",
           "synthetic_trajectory"]
