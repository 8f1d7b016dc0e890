"""ConDense made trainable: 2D and 3D features that agree through rendering, anchored to a 2D teacher.

A sample is one synthetic scene (:mod:`manyview.synth`, exact depth and cameras) rendered along its trajectory;
``num_views`` of its frames are drawn, and ``num_points`` surface points are drawn from the pixels those views see
(world points from the exact depth, with their colours)::

    images (V, 3, S, S) in [0, 1]   fxfycxcy (V, 4) px   c2w (V, 4, 4)   points (P, 3)   colors (P, 3)

Loss (per micro-batch, :class:`~manyview.features.condense.ConDense` does the forward pass):

- consistency: 1 - cos(rendered 3D features / alpha - m, 2D student features - m) at the grid cells whose
  accumulated opacity is at least ``min_alpha``, m the 2D features' channel means over those cells (gradients reach
  both students): the 3D features must match the 2D ones' offset and their variation (uncentred, 3D features
  that kept only the 2D features' common direction scored cos 0.94 and stayed near-constant, spread 0.006);
- anchor: 1 - cos(anchor decoder(2D student features), frozen teacher features), every cell, both centred per
  channel over the micro-batch's cells first. The teacher's features are non-negative (ReLU stages), so without
  the centring a constant 2D feature already scores cos ~0.4 against them, and consistency + anchor collapsed the
  students onto a near-constant direction (measured on the tiny preset: the directions' spread, 1 - |mean unit
  2D feature|^2 over cells, was 0.002 after 50 steps, the teacher's 0.71); centred, a constant scores 0 and only
  features that predict the teacher's variation do;
- offset: log(mean |f|^2 / mean |f - mean f|^2) of the 2D student's features f over the micro-batch's cells, i.e.
  minus the log of the fraction of their energy that varies from cell to cell: 0 for centred features, large for a
  near-constant field. Cosine matching cannot see through a common offset, and the consistency term alone is met by
  any shared constant. (A scale-free penalty such as |mean unit vector|^2 has a vanishing gradient at collapse and
  did not move in 20 steps; the log ratio's gradient grows there.)

``consistency_weight * consistency + anchor_weight * anchor + offset_weight * offset``; the first two may be 0 (the
ablations). Train with ``manyview train condense`` (see the CLI) or :func:`manyview.train.train` with
:class:`CondenseTask`; ``out_dir/final`` is then a model folder that ``ConDense.from_pretrained`` reads.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.features.condense import ConDense, ConDenseConfig
from manyview.features.student3d import PointBackboneConfig
from manyview.features.teachers import Teacher, load_teacher
from manyview.synth.samples import EVAL_SEED_START
from manyview.train.config import OptimConfig, ScheduleConfig, TrainConfig
from manyview.train.task import indexed_stream


@dataclass
class CondenseDataConfig:
    """Synthetic scenes and how a sample is drawn from one."""

    image_size: int = 64
    """Square rendering size S."""
    num_views: int = 3
    frames: int = 8
    """Frames rendered along each scene's trajectory (the views are drawn from them)."""
    orbit_arc_deg: float = 120.0
    """Object scenes: the arc the frames span (so views overlap)."""
    num_points: int = 2048
    kinds: tuple[Literal["object", "room"], ...] = ("object", "room")
    num_scenes: int = 2000
    """Training scene seeds are [0, num_scenes): never the held-out evaluation seeds."""
    supersample: int = 1
    cache_scenes: int = 256
    """Rendered trajectories kept in memory per data process (0: render every sample afresh)."""
    num_workers: int = 0

    def check(self) -> None:
        if self.image_size < 16:
            raise ManyviewError(f"image_size must be at least 16, got {self.image_size}")
        if not 1 <= self.num_views <= self.frames:
            raise ManyviewError(f"need 1 <= num_views <= frames, got {self.num_views} and {self.frames}")
        if self.num_points < 2:
            raise ManyviewError(f"num_points must be at least 2, got {self.num_points}")
        if not 0 < self.num_scenes <= EVAL_SEED_START:
            raise ManyviewError(f"num_scenes must be in [1, {EVAL_SEED_START}] so training never sees the held-out "
                                "evaluation seeds")
        if not self.kinds:
            raise ManyviewError("kinds must name at least one scene kind")


@dataclass
class CondenseTaskConfig:
    model: ConDenseConfig = field(default_factory=ConDenseConfig)
    data: CondenseDataConfig = field(default_factory=CondenseDataConfig)
    teacher_weights: Path | None = None
    """The teacher's weights (DINOv2 / CLIP: the downloaded checkpoint); None for the packaged / bundled ones."""
    consistency_weight: float = 1.0
    anchor_weight: float = 1.0
    min_alpha: float = 0.5
    """Grid cells whose accumulated opacity is below this are left out of the consistency term."""
    offset_weight: float = 0.1
    """Weight of the term that keeps a common offset out of the 2D features (against collapse onto a constant)."""


def cosine_distance(a: Tensor, b: Tensor, dim: int = 1) -> Tensor:
    """1 - cos(a, b) along ``dim``."""
    return 1 - F.cosine_similarity(a.float(), b.float(), dim=dim, eps=1e-6)


class CondenseLosses(NamedTuple):
    consistency: Tensor
    anchor: Tensor
    offset: Tensor
    coverage: Tensor  # fraction of cells counted by the consistency term


def centre_channels(x: Tensor) -> Tensor:
    """(N, C, h, w) minus each channel's mean over all N x h x w cells."""
    return x - x.float().mean(dim=(0, 2, 3), keepdim=True)


def common_offset(features: Tensor, eps: float = 1e-8) -> Tensor:
    """log(mean |f|^2 / mean |f - mean f|^2) over the cells of (N, C, h, w): 0 when the channel means are 0."""
    f = features.float()
    energy = f.square().sum(1).mean()
    varying = centre_channels(f).square().sum(1).mean()
    return torch.log(energy + eps) - torch.log(varying + eps)


def condense_losses(rendered: Tensor, alpha: Tensor, features2d: Tensor, anchor: Tensor, teacher: Tensor,
                    min_alpha: float) -> CondenseLosses:
    """The loss terms of one micro-batch (see the module docstring); all inputs flattened to (N, ·, h, w)."""
    mask = (alpha >= min_alpha).float()
    rendered = rendered / alpha.clamp_min(1e-6)[:, None]
    weights = mask[:, None] / mask.sum().clamp_min(1.0)
    mean2d = (features2d.float() * weights).sum(dim=(0, 2, 3), keepdim=True)  # over the counted cells
    consistency = (cosine_distance(rendered - mean2d, features2d - mean2d) * mask).sum() / mask.sum().clamp_min(1.0)
    anchor = cosine_distance(centre_channels(anchor), centre_channels(teacher)).mean()
    return CondenseLosses(consistency, anchor, common_offset(features2d), mask.mean())


class SyntheticScenes:
    """Samples from procedural scenes; rendered trajectories are kept in a bounded LRU cache."""

    def __init__(self, data: CondenseDataConfig):
        self.data = data
        self._cache: OrderedDict[int, tuple[Tensor, ...]] = OrderedDict()

    def trajectory(self, seed: int) -> tuple[Tensor, ...]:
        """uint8 images (F, 3, S, S), world points (F, S, S, 3) (0 where nothing is seen), valid (F, S, S),
        fxfycxcy (F, 4), c2w (F, 4, 4)."""
        if seed in self._cache:
            self._cache.move_to_end(seed)
            return self._cache[seed]
        from manyview.synth import generate
        from manyview.synth.samples import views_to_sample

        d = self.data
        kind = d.kinds[seed % len(d.kinds)]
        kwargs = {"arc_deg": d.orbit_arc_deg} if kind == "object" else {}
        _, views = generate(seed, kind, d.frames, d.image_size, d.image_size, supersample=d.supersample, **kwargs)
        s = views_to_sample(views)
        out = ((s["images"] * 255).round().to(torch.uint8), s["pts3d"], s["valid"], s["fxfycxcy"], s["c2w"])
        if d.cache_scenes > 0:
            self._cache[seed] = out
            while len(self._cache) > d.cache_scenes:
                self._cache.popitem(last=False)
        return out

    def sample(self, index: int, g: torch.Generator) -> dict[str, Tensor]:
        d = self.data
        seed = int(torch.randint(d.num_scenes, (), generator=g))
        images, pts, valid, fxfycxcy, c2w = self.trajectory(seed)
        views = torch.randperm(images.shape[0], generator=g)[: d.num_views].sort().values
        images = images[views].float() / 255
        where = valid[views].nonzero()  # (n, 3): view, row, col
        if where.shape[0] == 0:
            raise ManyviewError(f"synthetic scene {seed} shows no surface in its views")
        pick = torch.randint(where.shape[0], (d.num_points,), generator=g) if where.shape[0] < d.num_points else \
            torch.randperm(where.shape[0], generator=g)[: d.num_points]
        v, r, c = where[pick].unbind(-1)
        return {"images": images, "fxfycxcy": fxfycxcy[views], "c2w": c2w[views],
                "points": pts[views][v, r, c].float(), "colors": images[v, :, r, c]}


class CondenseTask:
    """:class:`~manyview.train.TrainTask` for ConDense on synthetic scenes; see the module docstring."""

    def __init__(self, cfg: CondenseTaskConfig | None = None, teacher: Teacher | None = None):
        self.cfg = cfg or CondenseTaskConfig()
        self.cfg.data.check()
        if self.cfg.consistency_weight < 0 or self.cfg.anchor_weight < 0 or \
                self.cfg.consistency_weight + self.cfg.anchor_weight <= 0:
            raise ManyviewError("consistency_weight and anchor_weight must be >= 0, and not both 0")
        if self.cfg.offset_weight < 0:
            raise ManyviewError(f"offset_weight must be >= 0, got {self.cfg.offset_weight}")
        self.teacher = teacher if teacher is not None else load_teacher(self.cfg.model.teacher,
                                                                        self.cfg.teacher_weights)
        self.source = SyntheticScenes(self.cfg.data)

    def sample(self, index: int, g: torch.Generator) -> dict[str, Tensor]:
        return self.source.sample(index, g)

    def build_model(self) -> nn.Module:
        return ConDense(self.cfg.model, self.teacher)

    def make_stream(self, rank: int, world: int, seed: int, micro_batch: int, start: int) -> Iterable:
        return indexed_stream(self.sample, rank, world, seed, micro_batch, start, num_workers=self.cfg.data.num_workers)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["images"]
        out = model(images, batch["points"], batch["colors"], batch["fxfycxcy"], batch["c2w"])
        self.teacher.to(images.device)
        with torch.no_grad():
            target = self.teacher(images.flatten(0, 1))
        terms = condense_losses(out.rendered.flatten(0, 1), out.alpha.flatten(0, 1), out.features2d.flatten(0, 1),
                                out.anchor.flatten(0, 1), target, self.cfg.min_alpha)
        total = (self.cfg.consistency_weight * terms.consistency + self.cfg.anchor_weight * terms.anchor
                 + self.cfg.offset_weight * terms.offset)
        return total, {name: value.detach() for name, value in terms._asdict().items()}

    def save_weights(self, state_dict: dict[str, Tensor], directory: Path) -> None:
        """config.json + model.safetensors (``ConDense.from_pretrained``)."""
        ConDense(self.cfg.model).load_tensors(state_dict, path=directory).save_pretrained(directory)


# --------------------------------------------------------------------------------------------- presets
@dataclass
class CondenseRun:
    """A training run: the trainer's config and the task's (what a preset returns)."""

    train: TrainConfig
    task: CondenseTaskConfig


def _tiny() -> CondenseRun:
    model = ConDenseConfig(dim=32, head_hidden=64, point=PointBackboneConfig(width=32, depth=2, heads=4, k=8))
    data = CondenseDataConfig(image_size=64, num_views=3, frames=6, num_points=1024, num_scenes=64, cache_scenes=64)
    return CondenseRun(
        TrainConfig(out_dir=Path("runs/condense_tiny"), steps=100, batch_size=2, log_every=5, ckpt_every=50,
                    keep_last=1, optim=OptimConfig(lr=1e-3, weight_decay=0.05, grad_clip=1.0),
                    schedule=ScheduleConfig(warmup_steps=10, min_lr=1e-5)),
        CondenseTaskConfig(model=model, data=data),
    )


def _bundled() -> CondenseRun:
    """The recipe of the bundled model, sized for one background job of at most 3 hours on 2 CPU cores.

    Measured single-threaded CPU time per step (batch of 2 scenes x 3 views at 128 x 128, the synthetic renderer's
    numba threads on the workqueue layer so they do not spin): 0.8 s with 1024 points per scene, 1.35 s with 2048;
    rendering a training scene's 8 frames 0.18 s. 6000 steps at 2048 points are then ~2.25 CPU hours, plus ~0.3 h
    of rendering (12000 samples from 1000 scenes, 400 kept in memory, ~0.8 GB): under 3 hours on one core, less
    on two. Weights: ~20 MB (float32; the 2D student's backbone is a copy of EfficientNet-Lite0's first stages)."""
    model = ConDenseConfig(dim=64, head_hidden=128, point=PointBackboneConfig(width=64, depth=3, heads=4, k=16))
    data = CondenseDataConfig(image_size=128, num_views=3, frames=8, orbit_arc_deg=120.0, num_points=2048,
                              num_scenes=1000, cache_scenes=400)
    return CondenseRun(
        TrainConfig(out_dir=Path("runs/condense_bundled"), steps=6000, batch_size=2, log_every=20, ckpt_every=200,
                    keep_last=2, optim=OptimConfig(lr=5e-4, weight_decay=0.05, grad_clip=1.0),
                    schedule=ScheduleConfig(warmup_steps=200, min_lr=1e-5)),
        CondenseTaskConfig(model=model, data=data),
    )


def _ablation(consistency_weight: float, anchor_weight: float):
    """The bundled recipe shortened to 150 steps (15 of warm-up) at 1024 points per scene, with the given loss
    weights: the three ablation runs (both terms, consistency only, anchor only) differ in nothing else. ~0.8 CPU
    s per step: a few minutes each on an idle core."""
    def build() -> CondenseRun:
        run = _bundled()
        run.train = dataclasses.replace(run.train, steps=150, ckpt_every=50, log_every=10, out_dir=Path(
            f"runs/condense_ablation_c{consistency_weight:g}_a{anchor_weight:g}"),
            schedule=dataclasses.replace(run.train.schedule, warmup_steps=15))
        run.task.data.num_points = 1024
        run.task.data.cache_scenes = 256
        run.task.consistency_weight, run.task.anchor_weight = consistency_weight, anchor_weight
        return run
    return build


PRESETS = {"tiny": _tiny, "bundled": _bundled, "ablation-both": _ablation(1.0, 1.0),
           "ablation-consistency": _ablation(1.0, 0.0), "ablation-anchor": _ablation(0.0, 1.0)}


def preset(name: str) -> CondenseRun:
    """A fresh copy of run preset ``name``."""
    if name not in PRESETS:
        raise ManyviewError(f"unknown ConDense training preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


__all__ = ["CondenseDataConfig", "CondenseLosses", "CondenseRun", "CondenseTask", "CondenseTaskConfig", "PRESETS",
           "SyntheticScenes", "centre_channels", "common_offset", "condense_losses", "cosine_distance", "preset"]
