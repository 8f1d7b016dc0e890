"""Reconstruction evaluation: Fast3R, COLMAP SfM and the pairwise baseline on held-out scenes, one protocol.

Synthetic mode (:func:`evaluate_synthetic`): held-out scenes (seeds ``EVAL_SEED_START + i``, never trained on) of
each kind, rendered with N views each, are reconstructed by every method; per scene it records

- pose (reference/fast3r.md §6.1, :func:`manyview.metrics.pose.pose_metrics`): RRA@5/15, RTA@5/15 and mAA(30)
  over all N(N-1)/2 view pairs, relative poses, so no alignment is needed;
- geometry after a Sim(3) alignment to the ground truth (:func:`manyview.metrics.geometry.reconstruction_metrics`):
  accuracy / completeness (mean distances, ground-truth units) of the method's point cloud against the ground
  truth cloud of all valid pixels. Dense methods are aligned on same-pixel correspondences of their pointmaps;
  COLMAP (sparse, no per-pixel output) on the registered camera centres (needs >= 3);
- wall time of the method's whole call (inference and camera recovery, or all of SfM).

``fast3r+ba`` is Fast3R's cameras refined by bundle adjustment (:func:`manyview.recon.refine.refine_poses`, the
path of ``manyview reconstruct --model fast3r --refine``): the same Fast3R pass as the ``fast3r`` row gives the
initial cameras, and bundle adjustment matches features on the same scene rendered at ``ba_size`` (photos are
finer than a network's input; real mode gives it the photos themselves). Its geometry is BA's sparse points,
aligned on the camera centres of the views it refined; ``registration_rate`` is the refined fraction, and views it
could not refine keep Fast3R's pose (carried into the refined frame), so they are scored, not dropped. Its time
is Fast3R's plus BA's.

A trivial row (``identity``: every camera at one pose) shows what the pose numbers give for free: rooms are
walked through with small turns, so many pairs are within 15 degrees of each other to begin with.

COLMAP may leave views unregistered. Its pose numbers are reported twice: the main columns count every pair
that involves an unregistered view as a failure (error +inf: wrong at every threshold), the ``*_registered``
columns only score pairs of registered views. ``registration_rate`` is the registered fraction.

Real mode (:func:`evaluate_real`): photos without ground truth (``/work/shared/data/real/{family,teddybear}``);
COLMAP on all full-resolution frames gives pseudo ground-truth poses, and Fast3R (and the pairwise baseline) on
N evenly spaced frames, centre-cropped to a square of the model's size, are scored against those poses (pose
metrics only: cropping and resizing change intrinsics, not poses).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.metrics.geometry import reconstruction_metrics
from manyview.metrics.pose import accuracy_at, mean_average_accuracy, relative_pose_errors
from manyview.scene import Cameras

POSE_KEYS = ("RRA@5", "RRA@15", "RTA@5", "RTA@15", "mAA@30")


@dataclass
class SyntheticEval:
    """What to evaluate on held-out synthetic scenes."""

    views: tuple[int, ...] = (4, 8, 16)
    scenes: int = 5
    """Scenes per kind and view count (held-out scenes 0 .. scenes-1)."""
    kinds: tuple[Literal["object", "room"], ...] = ("object", "room")
    height: int = 112
    width: int = 112
    supersample: int = 1
    first_scene: int = 0
    """Index of the first held-out scene (scene i has seed EVAL_SEED_START + i)."""
    max_points: int = 50_000
    """Points per cloud (random subset) for the accuracy / completeness nearest-neighbour search."""
    ba_size: int = 448
    """Side of the renders bundle adjustment (``fast3r+ba``) matches features on; Fast3R sees ``height`` x
    ``width`` renders of the same cameras."""


# ------------------------------------------------------------------------------------------------ weights
def load_fast3r(weights: str | os.PathLike | None = None, preset: str = "tiny"):
    """Fast3R from a Hugging Face folder (config.json + model.safetensors), from a trainer checkpoint folder
    (model.safetensors without config.json: the architecture is ``preset``), or the bundled weights (None)."""
    from manyview import assets
    from manyview.models.fast3r import Fast3R

    path = assets.bundled_model_dir("fast3r") if weights is None else Path(weights)
    if path is None:
        raise ManyviewError("the bundled Fast3R weights are not installed; pass --weights",
                            assets.bundled_path("fast3r"))
    if not path.exists():
        raise ManyviewError("no such weights file or folder", path)
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file():
        return Fast3R.from_pretrained(path)
    return Fast3R.from_pretrained(path, config=preset)


def load_pairwise(weights: str | os.PathLike):
    from manyview.models.pairwise import PairwiseNet

    return PairwiseNet.from_pretrained(weights)


# ------------------------------------------------------------------------------------------------ metrics
def pose_scores(pred: Cameras, gt: Cameras, registered: Tensor | None = None) -> dict[str, float]:
    """RRA / RTA @5, @15 and mAA(30), in percent, over all view pairs.

    ``registered`` (N,) bool: pairs touching an unregistered view count as failures in the main keys; the
    ``*_registered`` keys score the pairs of registered views only (NaN with fewer than two).
    """
    n = len(gt)
    reg = torch.ones(n, dtype=torch.bool) if registered is None else registered.bool().cpu()
    rot = torch.full((n * (n - 1) // 2,), math.inf, dtype=torch.float64)
    trans = rot.clone()
    idx = reg.nonzero()[:, 0]
    out: dict[str, float] = {}
    if len(idx) >= 2:
        r, t = relative_pose_errors(pred[idx].to(torch.float64), gt[idx].to(torch.float64))
        i, j = torch.combinations(torch.arange(n), 2).unbind(-1)
        both = reg[i] & reg[j]  # pairs of registered views, in the same combinations order as (idx x idx)
        rot[both], trans[both] = r, t
        out.update(_pose_table(r, t, "_registered"))
    else:
        out.update({k + "_registered": math.nan for k in POSE_KEYS})
    out.update(_pose_table(rot, trans, ""))
    return out


def _pose_table(rot: Tensor, trans: Tensor, suffix: str) -> dict[str, float]:
    return {
        f"RRA@5{suffix}": 100 * accuracy_at(rot, 5.0), f"RRA@15{suffix}": 100 * accuracy_at(rot, 15.0),
        f"RTA@5{suffix}": 100 * accuracy_at(trans, 5.0), f"RTA@15{suffix}": 100 * accuracy_at(trans, 15.0),
        f"mAA@30{suffix}": 100 * mean_average_accuracy(rot.nan_to_num(math.inf), trans.nan_to_num(math.inf)),
    }


def _subsample(x: Tensor, k: int, seed: int = 0) -> Tensor:
    if len(x) <= k:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]]


def dense_geometry(pred_pointmaps: Tensor, pred_points: Tensor, gt_pointmaps: Tensor, valid: Tensor,
                   max_points: int = 50_000) -> dict[str, float]:
    """Accuracy / completeness of ``pred_points`` (P, 3) against the ground truth cloud (valid pixels of
    ``gt_pointmaps`` (N, H, W, 3)), after the Sim(3) fitted on same-pixel pairs of ``pred_pointmaps``."""
    src, dst = pred_pointmaps[valid].double(), gt_pointmaps[valid].double()
    finite = torch.isfinite(src).all(-1)
    src, dst = src[finite], dst[finite]
    if len(src) < 3 or len(pred_points) == 0:
        return {"accuracy": math.nan, "completeness": math.nan}
    pairs = (_subsample(src, max_points, 1), _subsample(dst, max_points, 1))
    m = reconstruction_metrics(_subsample(pred_points.double(), max_points), _subsample(dst, max_points, 2),
                               align_pairs=pairs)
    return {"accuracy": m["accuracy"], "completeness": m["completeness"]}


def sparse_geometry(points: Tensor, pred: Cameras, gt: Cameras, registered: Tensor, gt_points: Tensor,
                    max_points: int = 50_000) -> dict[str, float]:
    """COLMAP's sparse points against the ground truth cloud, aligned on registered camera centres (>= 3)."""
    if int(registered.sum()) < 3 or len(points) == 0:
        return {"accuracy": math.nan, "completeness": math.nan}
    pairs = (pred.centers[registered].double(), gt.centers[registered].double())
    m = reconstruction_metrics(_subsample(points.double(), max_points), _subsample(gt_points.double(), max_points),
                               align_pairs=pairs)
    return {"accuracy": m["accuracy"], "completeness": m["completeness"]}


# ------------------------------------------------------------------------------------------------ methods
def run_fast3r(model, images: Tensor) -> dict[str, Any]:
    """Fast3R reconstruction of (N, 3, H, W): cameras, aligned pointmaps, filtered cloud, wall time."""
    from manyview.recon.reconstruct import reconstruct

    t0 = time.perf_counter()
    rec = reconstruct(images, model, progress=False)
    return {"cameras": rec.cameras, "pointmaps": rec.pointmaps, "points": rec.points.xyz,
            "time_s": time.perf_counter() - t0}


def run_pairwise(model, images: Tensor) -> dict[str, Any]:
    from manyview.recon.reconstruct import reconstruct_pairwise

    t0 = time.perf_counter()
    rec = reconstruct_pairwise(images, model, progress=False)
    return {"cameras": rec.cameras, "pointmaps": rec.pointmaps, "points": rec.points.xyz,
            "time_s": time.perf_counter() - t0}


def run_bundle_adjustment(photos, initial: Cameras, fast3r_time_s: float) -> dict[str, Any]:
    """``initial`` cameras (at the photos' own sizes) refined by bundle adjustment on ``photos`` (Views or image
    files), as ``manyview reconstruct --model fast3r --refine`` does; the time includes Fast3R's."""
    from manyview.recon.posed_photos import MAX_PAIR_ROTATION_DEG
    from manyview.recon.refine import refine_poses

    res = refine_poses(photos, initial, max_pair_rotation_deg=MAX_PAIR_ROTATION_DEG,
                       num_threads=torch.get_num_threads(), progress=False)
    return {"cameras": res.cameras, "registered": res.refined.cpu(), "points": res.points.xyz,
            "time_s": fast3r_time_s + res.wall_time, "registration_rate": res.num_refined / len(initial),
            "reprojection_error_px": res.mean_reprojection_error}


def run_colmap(views_or_files) -> dict[str, Any]:
    from manyview.recon.sfm import run_colmap_sfm

    res = run_colmap_sfm(views_or_files, progress=False)
    return {"cameras": res.cameras, "registered": res.registered.cpu(), "points": res.points.xyz,
            "time_s": res.wall_time, "registration_rate": res.registration_rate}


# ------------------------------------------------------------------------------------------------ synthetic
def evaluate_synthetic(cfg: SyntheticEval, fast3r=None, pairwise=None, colmap: bool = True, identity: bool = False,
                       refine: bool = False, log=print) -> list[dict[str, Any]]:
    """One record per (method, kind, N, scene): pose scores, geometry, time (see the module docstring).

    ``identity`` adds the trivial answer "every camera at one pose" (method ``identity``): its RRA is the share of
    view pairs whose true relative rotation is already small, the floor a method has to beat (its RTA is 0).
    ``refine`` adds ``fast3r+ba`` (needs ``fast3r``): Fast3R's cameras of the same pass, bundle-adjusted.
    """
    from manyview.synth import generate
    from manyview.synth.samples import eval_scene_seed, views_to_sample

    methods: list[tuple[str, Any]] = []
    if refine and fast3r is None:
        raise ManyviewError("fast3r+ba refines Fast3R's cameras: give Fast3R weights")
    if fast3r is not None:
        methods.append(("fast3r", fast3r))
        if refine:
            methods.append(("fast3r+ba", fast3r))
    if pairwise is not None:
        methods.append(("pairwise", pairwise))
    if colmap:
        methods.append(("colmap", None))
    if identity:
        methods.append(("identity", None))
    if not methods:
        raise ManyviewError("nothing to evaluate: give Fast3R weights, pairwise weights or enable COLMAP")
    if cfg.scenes < 1 or not cfg.views or min(cfg.views) < 2:
        raise ManyviewError(f"need scenes >= 1 and view counts >= 2, got scenes={cfg.scenes}, views={cfg.views}")
    records = []
    for kind in cfg.kinds:
        for n in cfg.views:
            for s in range(cfg.first_scene, cfg.first_scene + cfg.scenes):
                seed = eval_scene_seed(s)
                _, views = generate(seed, kind=kind, num_views=n, height=cfg.height, width=cfg.width,
                                    supersample=cfg.supersample)
                gt = views_to_sample(views)
                gt_cloud = gt["pts3d"][gt["valid"]]
                fast3r_out = None  # the fast3r row's pass, reused as fast3r+ba's initialisation
                for name, model in methods:
                    base = {"method": name, "kind": kind, "views": n, "scene": s, "seed": seed}
                    try:
                        if name == "identity":
                            same = views.cameras.with_poses(torch.eye(4).expand(n, 4, 4).clone())
                            out = {"time_s": 0.0}
                            rec = {**pose_scores(same, views.cameras), "accuracy": math.nan,
                                   "completeness": math.nan, "registration_rate": 1.0}
                        elif name == "colmap":
                            out = run_colmap(views)
                            rec = {**pose_scores(out["cameras"], views.cameras, out["registered"]),
                                   **sparse_geometry(out["points"], out["cameras"], views.cameras, out["registered"],
                                                     gt_cloud, cfg.max_points),
                                   "registration_rate": out["registration_rate"]}
                        elif name == "fast3r+ba":
                            fine = views if cfg.ba_size == cfg.height == cfg.width else generate(
                                seed, kind=kind, num_views=n, height=cfg.ba_size, width=cfg.ba_size,
                                supersample=cfg.supersample)[1]
                            first = fast3r_out or run_fast3r(model, views.images)
                            initial = first["cameras"].to("cpu", torch.float64).resized(fine.height, fine.width)
                            out = run_bundle_adjustment(fine, initial, first["time_s"])
                            rec = {**pose_scores(out["cameras"], views.cameras),
                                   **sparse_geometry(out["points"], out["cameras"], views.cameras, out["registered"],
                                                     gt_cloud, cfg.max_points),
                                   "registration_rate": out["registration_rate"]}
                        else:
                            out = (run_fast3r if name == "fast3r" else run_pairwise)(model, views.images)
                            if name == "fast3r":
                                fast3r_out = out
                            rec = {**pose_scores(out["cameras"], views.cameras),
                                   **dense_geometry(out["pointmaps"], out["points"], gt["pts3d"], gt["valid"],
                                                    cfg.max_points),
                                   "registration_rate": 1.0}
                        rec["time_s"] = out["time_s"]
                    except ManyviewError as e:  # a failed scene is a measurement, not a crash
                        rec = {**{k: 0.0 for k in POSE_KEYS}, "accuracy": math.nan, "completeness": math.nan,
                               "registration_rate": 0.0, "time_s": math.nan, "error": str(e)}
                    records.append({**base, **rec})
                    log(f"{name:8s} {kind:6s} N={n:<3d} scene {s}: RRA@15 {rec['RRA@15']:.1f} "
                        f"RTA@15 {rec['RTA@15']:.1f} mAA@30 {rec['mAA@30']:.1f} ({rec['time_s']:.2f} s)")
    return records


# ------------------------------------------------------------------------------------------------ real
def evaluate_real(folder: str | os.PathLike, views: Sequence[int] = (8,), fast3r=None, pairwise=None,
                  size: int = 112, refine: bool = False, log=print) -> list[dict[str, Any]]:
    """Photos in ``folder`` against COLMAP's poses of all of them (pseudo ground truth), N evenly spaced frames.
    ``refine`` adds ``fast3r+ba``: the fast3r row's cameras moved onto the full photos and bundle-adjusted there."""
    from manyview.io.images import list_images, load_images
    from manyview.recon.posed_photos import cameras_at_source_size
    from manyview.recon.reconstruct import reconstruction_policy, select_views

    folder = Path(folder)
    files = list_images(folder)
    if len(files) < 2:
        raise ManyviewError("needs at least 2 images", folder)
    if refine and fast3r is None:
        raise ManyviewError("fast3r+ba refines Fast3R's cameras: give Fast3R weights")
    t0 = time.perf_counter()
    ref = run_colmap(files)
    log(f"colmap   {folder.name}: registered {ref['registration_rate'] * 100:.0f}% of {len(files)} frames "
        f"({time.perf_counter() - t0:.1f} s)")
    records = []
    for n in views:
        chosen = select_views(len(files), n)
        subset = [files[i] for i in chosen]
        gt, reg = ref["cameras"][chosen], ref["registered"][chosen]
        runs = [("fast3r", fast3r), ("pairwise", pairwise)] + ([("fast3r+ba", fast3r)] if refine else [])
        fast3r_out = transforms = None
        for name, model in runs:
            if model is None:
                continue
            extra: dict[str, Any] = {}
            if name == "fast3r+ba":
                initial = cameras_at_source_size(fast3r_out["cameras"].to("cpu", torch.float64), transforms)
                try:
                    out = run_bundle_adjustment(subset, initial, fast3r_out["time_s"])
                except ManyviewError as e:  # a failed refinement is a measurement, not a crash
                    out = {**fast3r_out, "registration_rate": 0.0}
                    extra["error"] = str(e)
                extra["refined"] = round(out["registration_rate"] * len(chosen))
            else:
                loaded, transforms = load_images(subset, reconstruction_policy(size, True, model.patch_size))
                out = (run_fast3r if name == "fast3r" else run_pairwise)(model, loaded.images)
                if name == "fast3r":
                    fast3r_out = out
            # views COLMAP did not register have no pseudo ground truth: score pairs of registered views only
            scores = pose_scores(out["cameras"], gt, reg)
            rec = {"method": name, "scene": folder.name, "views": len(chosen), "pseudo_gt": "colmap",
                   "pseudo_gt_registered": int(reg.sum()),
                   **{k: scores[k + "_registered"] for k in POSE_KEYS}, "time_s": out["time_s"], **extra}
            records.append(rec)
            log(f"{name:9s} {folder.name} N={len(chosen)}: RRA@5 {rec['RRA@5']:.1f} RRA@15 {rec['RRA@15']:.1f} "
                f"RTA@15 {rec['RTA@15']:.1f} mAA@30 {rec['mAA@30']:.1f}")
    return records


# ------------------------------------------------------------------------------------------------ summary
def summarize(records: list[dict[str, Any]], keys: Sequence[str] = ("method", "kind", "views")) -> list[dict]:
    """Mean of every numeric field over records sharing ``keys`` (NaNs skipped), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    rows = []
    skip = set(keys) | {"scene", "seed"}
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        row["scenes"] = len(rs)
        names = dict.fromkeys(k for r in rs for k, v in r.items() if k not in skip and _number(v))
        for name in names:
            vals = [float(r[name]) for r in rs if _number(r.get(name)) and math.isfinite(float(r[name]))]
            row[name] = sum(vals) / len(vals) if vals else math.nan
        rows.append(row)
    return rows


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, math.nan)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SYNTHETIC_COLUMNS = ("method", "kind", "views", "scenes", "RRA@5", "RRA@15", "RTA@5", "RTA@15", "mAA@30",
                     "RRA@15_registered", "registration_rate", "accuracy", "completeness", "time_s")
REAL_COLUMNS = ("method", "scene", "views", "pseudo_gt_registered", "RRA@5", "RRA@15", "RTA@5", "RTA@15", "mAA@30",
                "time_s")


def goal_check(rows: list[dict], views: int = 8, method: str = "fast3r") -> dict[str, Any]:
    """The bundled model's target on held-out synthetic scenes at ``views`` views: RRA@15 >= 95, RTA@15 >= 90,
    mAA(30) >= 80 (percent), over all kinds together (mean of the per-kind means)."""
    sel = [r for r in rows if r.get("method") == method and r.get("views") == views and "kind" in r]
    if not sel:
        return {}
    mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("RRA@15", "RTA@15", "mAA@30")}
    return {**mean, "views": views, "met": mean["RRA@15"] >= 95 and mean["RTA@15"] >= 90 and mean["mAA@30"] >= 80}


@dataclass
class EvalReport:
    records: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    real: list[dict] = field(default_factory=list)
    goal: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, Path):
                return str(x)
            return x

        return clean(asdict(self))
