"""Novel-view evaluation by the pixelSplat protocol, with two naive baselines beside the model.

Protocol (reference/lvsm.md §5): per scene, the context (input) and target frames named by an evaluation index
(pixelSplat's ``evaluation_index_re10k.json``: ``{key: {"context": [i, j], "target": [...]} | null}``); frames
LANCZOS-resized so the short side fits 256 and centre-cropped to 256 x 256; cameras of inputs and targets
normalised together (:func:`~manyview.geometry.poses.normalize_poses`, as the released evaluations do); PSNR on
[0, 1]-clipped renders, SSIM as ``skimage.structural_similarity(win_size=11, gaussian_weights=True,
data_range=1)`` (sample covariance, the skimage default), LPIPS with the VGG network (n/a when its weights are not
on disk); each metric averaged over a scene's targets, then over scenes.

Baselines, scored on the same targets: ``nearest-input`` copies the input view whose camera centre is closest to
the target's; ``mean-input`` is the pixel-wise mean of the input views. A model that does not beat them has not
learned to use the cameras.

Held-out synthetic scenes (:func:`synthetic_examples`) use seeds from
:data:`~manyview.synth.samples.EVAL_SEED_START` on, which training never draws.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.poses import normalize_poses
from manyview.metrics.image import lpips, lpips_available, psnr, ssim
from manyview.scene import Cameras, Views
from manyview.synth.samples import EVAL_SEED_START, trajectory_frames
from manyview.synth.scene import SceneKind

BASELINES = ("nearest-input", "mean-input")
METRICS = ("psnr", "ssim", "lpips")
PROTOCOL_SIZE = 256


@dataclass
class NVSExample:
    """One evaluation scene: posed inputs and posed targets, all of one square size."""

    key: str
    inputs: Views  # (Vi, 3, S, S) with cameras
    targets: Views  # (Vt, 3, S, S) with cameras


# --------------------------------------------------------------------------------------------- baselines
def nearest_input(inputs: Views, target_cameras: Cameras) -> Tensor:
    """(Vt, 3, H, W): for each target, the input image whose camera centre is nearest to the target's."""
    dist = torch.cdist(target_cameras.centers.double(), inputs.cameras.centers.double())  # (Vt, Vi)
    return inputs.images[dist.argmin(dim=1)]


def mean_input(inputs: Views, num_targets: int) -> Tensor:
    """(Vt, 3, H, W): the mean of the input images, the same for every target."""
    return inputs.images.mean(0, keepdim=True).expand(num_targets, -1, -1, -1)


def normalized_cameras(example: NVSExample, scale_factor: float) -> tuple[Cameras, Cameras]:
    """Input and target cameras of a scene, normalised together as the released evaluation loaders do."""
    both = Cameras.cat([example.inputs.cameras, example.targets.cameras]).to(torch.float64)
    both = both.with_poses(normalize_poses(both.c2w, scale_factor)).to(torch.float32)
    n = len(example.inputs)
    return both[:n], both[n:]


# --------------------------------------------------------------------------------------------- metrics
def image_metrics(pred: Tensor, gt: Tensor, use_lpips: bool, lpips_weights=None) -> dict[str, Tensor | None]:
    """Per-image PSNR / SSIM / LPIPS (V,) of renders against ground truth (V, 3, H, W); LPIPS None when off."""
    pred = pred.float().clamp(0, 1)
    gt = gt.float()
    return {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt, sample_covariance=True),
            "lpips": lpips(pred, gt, net="vgg", weights=lpips_weights) if use_lpips else None}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass
class NVSEvaluation:
    """Per-scene scores and their means, for the model and the baselines."""

    dataset: str
    methods: list[str]
    scenes: list[dict] = field(default_factory=list)  # {"key", "targets", method: {metric: mean over targets}}
    info: dict = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float | None]]:
        """method -> metric -> mean over scenes (None when the metric was not computed)."""
        out = {}
        for m in self.methods:
            row = {}
            for metric in METRICS:
                vals = [s[m][metric] for s in self.scenes if s[m][metric] is not None]
                row[metric] = _mean(vals) if vals and len(vals) == len(self.scenes) else None
            out[m] = row
        return out

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "num_scenes": len(self.scenes), "protocol": self.info.get("protocol"),
                "summary": self.summary(), "info": self.info, "scenes": self.scenes}

    def markdown(self) -> str:
        """A Markdown table: one row per method, PSNR (dB, higher is better), SSIM (higher), LPIPS (lower)."""
        lines = [f"{self.dataset}: {len(self.scenes)} scenes",
                 "", "| method | PSNR (dB) | SSIM | LPIPS |", "| --- | --- | --- | --- |"]

        def fmt(v, digits):
            return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.{digits}f}")

        for m, row in self.summary().items():
            lines.append(f"| {m} | {fmt(row['psnr'], 2)} | {fmt(row['ssim'], 3)} | {fmt(row['lpips'], 3)} |")
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> Path:
        from manyview.io.atomic import atomic_open

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1, allow_nan=True)
            fh.write("\n")
        return path


def evaluate(model, examples: Iterable[NVSExample], dataset: str, lpips_weights=None,
             target_batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> NVSEvaluation:
    """Score ``model`` (an LVSM-family model, or None for the baselines alone) and the baselines on ``examples``.

    The model renders each scene's targets from its inputs, cameras normalised together, under no_grad on the
    model's device.
    """
    use_lpips = lpips_available("vgg", lpips_weights)
    methods = (["model"] if model is not None else []) + list(BASELINES)
    result = NVSEvaluation(dataset, methods, info={"lpips": "vgg" if use_lpips else "n/a (no LPIPS weights)"})
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    for i, ex in enumerate(examples):
        if ex.inputs.cameras is None or ex.targets.cameras is None:
            raise ManyviewError(f"scene {ex.key!r}: inputs and targets need cameras")
        preds = {"nearest-input": nearest_input(ex.inputs, ex.targets.cameras),
                 "mean-input": mean_input(ex.inputs, len(ex.targets))}
        if model is not None:
            cin, ctgt = normalized_cameras(ex, model.config.scene_scale_factor)
            with torch.no_grad():
                out = model.render(ex.inputs.images[None].to(device), cin[None].to(device), ctgt[None].to(device),
                                   target_batch_size=target_batch_size)
            preds["model"] = out[0].float().cpu()
        row = {"key": ex.key, "targets": len(ex.targets)}
        for m in methods:
            scores = image_metrics(preds[m], ex.targets.images, use_lpips, lpips_weights)
            row[m] = {k: (None if v is None else float(v.double().mean())) for k, v in scores.items()}
        result.scenes.append(row)
        if progress is not None:
            progress(i + 1)
    if not result.scenes:
        raise ManyviewError(f"{dataset}: no scenes to evaluate")
    return result


# --------------------------------------------------------------------------------------------- datasets
def re10k_examples(root: str | os.PathLike, index_path: str | os.PathLike, size: int = PROTOCOL_SIZE,
                   limit: int | None = None, info: dict | None = None) -> Iterator[NVSExample]:
    """Scenes of a RealEstate10K chunk folder named by an evaluation index, in the index's order.

    Null entries are skipped (as every evaluation does), and so are index scenes the folder does not hold; the
    counts go into ``info`` (when given) as ``index_scenes``, ``null_entries``, ``missing_scenes``.
    """
    from manyview.io.images import ImageLoadPolicy
    from manyview.io.realestate10k import iter_scenes, read_evaluation_index, read_index

    root = Path(root)
    index = read_evaluation_index(index_path)
    entries = {k: v for k, v in index.items() if v is not None}
    if (root / "index.json").is_file():
        present = set(read_index(root))
    else:
        present = {s.key for s in iter_scenes(root)}
    keys = [k for k in entries if k in present]
    if info is not None:
        info.update(index_scenes=len(index), null_entries=len(index) - len(entries),
                    missing_scenes=len(entries) - len(keys))
    if not keys:
        raise ManyviewError(f"none of the {len(entries)} scenes of the evaluation index is in this folder", root)
    if limit is not None:
        keys = keys[:limit]
    order = {k: i for i, k in enumerate(keys)}
    policy = ImageLoadPolicy(size=(size, size), crop="center", resample="lanczos")
    pending: dict[str, NVSExample] = {}
    next_key = 0
    # chunks are read in file order; scenes are yielded in the index's order (buffering the few out of order)
    for scene in iter_scenes(root, keys) if (root / "index.json").is_file() else (
            s for s in iter_scenes(root) if s.key in order):
        entry = entries[scene.key]
        if not entry.context or not entry.target:
            raise ManyviewError(f"scene {scene.key!r}: empty context or target list", index_path)
        frames = entry.context + entry.target
        views = scene.views(frames, policy)
        n = len(entry.context)
        pending[scene.key] = NVSExample(scene.key, views[list(range(n))], views[list(range(n, len(frames)))])
        while next_key < len(keys) and keys[next_key] in pending:
            yield pending.pop(keys[next_key])
            next_key += 1


class TrajectoryData(Protocol):
    """What :func:`synthetic_examples` reads of a description of synthetic training data: the fields of
    :class:`manyview.train.lvsm_task.LVSMDataConfig`, so that a model is evaluated on the kind of trajectories it
    was trained on."""

    kinds: Sequence[SceneKind]
    num_scenes: int  # training seeds are [0, num_scenes): evaluation seeds must lie beyond
    frames: int
    image_size: int
    supersample: int
    orbit_arc_deg: float
    min_frame_dist: int
    max_frame_dist: int


def synthetic_examples(data: TrajectoryData, num_scenes: int = 16, seed_base: int | None = None,
                       num_targets: int = 3) -> Iterator[NVSExample]:
    """Held-out procedural scenes, each rendered along its trajectory as in training
    (:func:`manyview.synth.samples.trajectory_frames` with ``data``'s fields): the inputs are the ends of a window
    of (min_frame_dist + max_frame_dist) / 2 frames, the targets ``num_targets`` frames evenly spaced strictly
    between them (inputs excluded, as in the RE10K protocol)."""
    seed_base = EVAL_SEED_START if seed_base is None else seed_base
    if seed_base < data.num_scenes:
        raise ManyviewError(f"evaluation seeds start at {seed_base}, inside the training seeds [0, {data.num_scenes})")
    span = min(max(2, round((data.min_frame_dist + data.max_frame_dist) / 2)), data.frames - 1)
    if span < 2:
        raise ManyviewError(f"trajectories of {data.frames} frames leave no frame between the inputs")
    for i in range(num_scenes):
        seed = seed_base + i
        images, fxfycxcy, c2w = trajectory_frames(seed, data.kinds, data.frames, data.image_size, data.supersample,
                                                  data.orbit_arc_deg)
        start = (data.frames - 1 - span) // 2
        inner = torch.linspace(start, start + span, num_targets + 2)[1:-1].round().long().clamp(start + 1,
                                                                                              start + span - 1)
        idx = [start, start + span] + inner.tolist()
        size = torch.tensor([data.image_size, data.image_size])
        cams = Cameras(fxfycxcy[idx], c2w[idx], size)
        views = Views(images=images[idx].float() / 255.0, cameras=cams,
                      names=[f"{seed}/{j:03d}" for j in idx])
        yield NVSExample(f"synth-{seed}", views[[0, 1]], views[list(range(2, len(idx)))])


__all__ = ["BASELINES", "METRICS", "NVSEvaluation", "NVSExample", "PROTOCOL_SIZE", "TrajectoryData", "evaluate",
           "image_metrics", "mean_input", "nearest_input", "normalized_cameras", "re10k_examples",
           "synthetic_examples"]
