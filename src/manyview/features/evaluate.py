"""How consistent features are across views: dense correspondence recall and key-point repeatability, by angle.

``manyview eval features`` runs :func:`evaluate_features`. Each method maps a scene's views to per-view feature
maps (V, C, h, w):

- ``teacher``: the frozen 2D teacher;
- ``student2d``: a ConDense model's 2D student;
- ``rendered3d``: the same model's 3D student on the scene's points, composited into each view
  (:meth:`~manyview.features.condense.ConDense.render`) and divided by the accumulated opacity.

**Held-out synthetic scenes** (seeds from :data:`manyview.synth.samples.EVAL_SEED_START` on, never trained on; exact
depth and cameras): object scenes orbited all the way round (their pairs span every angle bin) and rooms walked
through. Dense recall (:mod:`manyview.metrics.correspondence`): every cell of a stride-``grid_stride`` grid of view A
that B sees is matched to its nearest neighbour by cosine over all of B's cells; recall at 5 / 10 / 20 px, pooled
over every pair of views in an angle bin. The 3D student sees ``points`` surface points drawn from the views' exact
depth (with their colours), as a reconstruction would give it.

**Real photos** (a ``manyview reconstruct --model colmap`` folder: undistorted photos, PINHOLE cameras, the SfM
points): the reconstruction keeps no depth maps and no tracks, so the pseudo ground truth is its bundle-adjusted
points, sparse: a point is a query of the pair (A, B) when both views see it, and the error is the distance in B
between the match of A's feature at the point's projection (sampled bilinearly) and the point's projection in B.
Whether a view sees a point is decided by a depth map of the points themselves, splatted as opaque blobs
(:func:`~manyview.features.render.render_features` with each point's depth as its feature, blob radii from the point
spacing): a point counts when its depth is within ``occlusion_tol`` of that surface's, which removes points on the
far side of an object. Positions come from the 3D points and cameras (mean reprojection error well under 1 px), not
from any feature detector; the SfM points lie where SIFT found texture, so the real-photo recall is measured at
textured places, for every method alike.

**Key points** (synthetic scenes): :func:`~manyview.features.keypoints.keypoints2d` on each view (at most
``max_keypoints``), placed at the image's corners with descriptors from each method's own feature maps. For a pair
(A, B) and each direction, A's key points that B sees (exact depth) are projected into B; repeatability is the
fraction with a key point of B within t px of the projection, the matching score the fraction whose
mutual-nearest-neighbour descriptor match among B's key points lies within t px of it (SuperPoint's definitions),
pooled per angle bin. The positions come from the image, so repeatability is the same for every method; the
matching score is where their descriptors differ.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.features.keypoints import keypoints2d, match_descriptors, sample_descriptors
from manyview.features.render import grid_intrinsics, point_radii, render_features
from manyview.geometry.projection import project, unproject
from manyview.geometry.transforms import invert_rigid
from manyview.metrics.correspondence import (ANGLE_BINS_DEG, THRESHOLDS_PX, CorrespondenceRecall, cell_centres,
                                             multiview_recall, relative_rotation_deg, resample)
from manyview.synth.samples import eval_scene_seed
from manyview.synth.scene import SceneKind

FeatureFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""(images (V, 3, H, W), fxfycxcy (V, 4), c2w (V, 4, 4), points (P, 3), colours (P, 3) | None) -> (V, C, h, w)."""

KEYPOINT_THRESHOLDS_PX = (3.0, 8.0)


# --------------------------------------------------------------------------------------------- methods
def teacher_method(teacher) -> FeatureFn:
    def run(images, fxfycxcy, c2w, points, colors):
        return torch.cat([teacher(images[i:i + 1].float()) for i in range(images.shape[0])]).float()
    return run


def student2d_method(model) -> FeatureFn:
    def run(images, fxfycxcy, c2w, points, colors):
        return torch.cat([model.features2d(images[i:i + 1].float()) for i in range(images.shape[0])]).float()
    return run


def rendered3d_method(model, max_footprint: float = 2.0) -> FeatureFn:
    """The 3D student's point features rendered on the 2D student's grid (as
    :meth:`~manyview.features.condense.ConDense.render` does), divided by the accumulated opacity, with each blob's
    footprint capped at ``max_footprint`` grid cells: a reconstruction's stray points near a camera (none in the
    synthetic training scenes) would otherwise cover the whole view with one feature (measured on family: recall
    @10 0.2 % uncapped)."""
    def run(images, fxfycxcy, c2w, points, colors):
        H, W = images.shape[-2:]
        grid = model.student2d.grid(H, W)
        pts = points.float()
        f3d = model.features3d(pts, None if colors is None else colors.float())
        radii = point_radii(pts, model.config.radius_k, model.config.radius_scale)
        K = grid_intrinsics(fxfycxcy.float(), (H, W), grid)
        out = []
        for v in range(K.shape[0]):
            _, z = project(pts, K[v], invert_rigid(c2w[v].float()))
            r = torch.minimum(radii, max_footprint * z.clamp_min(1e-6) / K[v, :2].max())
            f, a = render_features(pts, f3d, r, torch.full_like(r, model.config.opacity), K[v:v + 1],
                                   c2w[v:v + 1].float(), *grid)
            out.append(f / a.clamp_min(1e-6)[:, None])
        return torch.cat(out)
    return run


def model_methods(model=None, teacher=None) -> dict[str, FeatureFn]:
    """The methods to evaluate: ``teacher`` when given, ``student2d`` and ``rendered3d`` when ``model`` is."""
    methods: dict[str, FeatureFn] = {}
    if teacher is not None:
        methods["teacher"] = teacher_method(teacher)
    if model is not None:
        model.eval()
        methods["student2d"] = student2d_method(model)
        methods["rendered3d"] = rendered3d_method(model)
    if not methods:
        raise ValueError("nothing to evaluate: pass a model and/or a teacher")
    return methods


# --------------------------------------------------------------------------------------------- key points
@dataclass
class KeypointStats:
    """Counts per angle bin: key points another view sees, re-detected ones and correct matches per threshold."""

    thresholds: tuple[float, ...] = KEYPOINT_THRESHOLDS_PX
    bins: tuple[tuple[float, float], ...] = ANGLE_BINS_DEG
    counts: dict[tuple[float, float], dict[str, float]] = field(default_factory=dict)

    def add(self, angle_deg: float, visible: int, repeated: Sequence[int], correct: Sequence[int],
            detected: int) -> None:
        b = next(((lo, hi) for lo, hi in self.bins if lo <= angle_deg < hi or
                  (hi == self.bins[-1][1] and angle_deg == hi)), None)
        if b is None:
            return
        c = self.counts.setdefault(b, {"visible": 0.0, "detected": 0.0, "pairs": 0.0,
                                       **{f"rep@{t:g}": 0.0 for t in self.thresholds},
                                       **{f"ms@{t:g}": 0.0 for t in self.thresholds}})
        c["visible"] += visible
        c["detected"] += detected
        c["pairs"] += 1
        for t, r, m in zip(self.thresholds, repeated, correct):
            c[f"rep@{t:g}"] += r
            c[f"ms@{t:g}"] += m

    def table(self) -> dict[str, dict[str, float]]:
        """{bin label: {'repeatability@3': r, 'matching_score@3': m, ..., 'keypoints': n, 'pairs': p}}."""
        out = {}
        groups = [(f"{lo:g}-{hi:g}", [(lo, hi)]) for lo, hi in self.bins] + [("all", list(self.bins))]
        for label, members in groups:
            rows = [self.counts[b] for b in members if b in self.counts]
            visible = sum(r["visible"] for r in rows)
            row = {}
            for t in self.thresholds:
                rep = sum(r[f"rep@{t:g}"] for r in rows)
                ms = sum(r[f"ms@{t:g}"] for r in rows)
                row[f"repeatability@{t:g}"] = rep / visible if visible else float("nan")
                row[f"matching_score@{t:g}"] = ms / visible if visible else float("nan")
            row["keypoints"] = visible
            row["pairs"] = float(sum(r["pairs"] for r in rows))
            out[label] = row
        return out


def _depth_at(depth: Tensor, xy: Tensor) -> Tensor:
    H, W = depth.shape
    col, row = xy[:, 0].floor().long(), xy[:, 1].floor().long()
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    out = torch.zeros(xy.shape[0], dtype=depth.dtype)
    out[inside] = depth[row[inside], col[inside]]
    return out


def keypoint_pair(kp_a, kp_b, depth_a: Tensor, depth_b: Tensor, fxfycxcy_a: Tensor, fxfycxcy_b: Tensor,
                  c2w_a: Tensor, c2w_b: Tensor, thresholds: Sequence[float] = KEYPOINT_THRESHOLDS_PX,
                  occlusion_tol: float = 0.05) -> tuple[int, list[int], list[int]]:
    """A's key points (``Keypoints2D``) that B sees, and how many of them are re-detected / correctly matched in B
    within each threshold (pixels): (visible, repeated per threshold, correct per threshold)."""
    xy_a = kp_a.xy.double()
    d_a = _depth_at(depth_a.double(), xy_a)
    world = unproject(xy_a, d_a, fxfycxcy_a.double(), c2w_a.double())
    uv, z = project(world, fxfycxcy_b.double(), invert_rigid(c2w_b.double()))
    d_b = _depth_at(depth_b.double(), uv)
    visible = (d_a > 0) & (z > 0) & (d_b > 0) & ((d_b - z).abs() <= occlusion_tol * z)
    n = int(visible.sum())
    if n == 0 or kp_b.xy.shape[0] == 0:
        return n, [0] * len(thresholds), [0] * len(thresholds)
    dist = torch.cdist(uv[visible], kp_b.xy.double())  # (n, Kb)
    nearest = dist.min(dim=1).values
    ia, ib, _ = match_descriptors(kp_a.descriptors, kp_b.descriptors)
    vis_index = torch.full((xy_a.shape[0],), -1, dtype=torch.long)
    vis_index[visible] = torch.arange(n)
    keep = vis_index[ia] >= 0
    match_err = (kp_b.xy.double()[ib[keep]] - uv[ia[keep]]).norm(dim=-1)
    return n, [int((nearest <= t).sum()) for t in thresholds], [int((match_err <= t).sum()) for t in thresholds]


def keypoint_stats(features: Tensor, depths: Tensor, fxfycxcy: Tensor, c2w: Tensor, max_keypoints: int = 256,
                   thresholds: Sequence[float] = KEYPOINT_THRESHOLDS_PX, stats: KeypointStats | None = None,
                   occlusion_tol: float = 0.05, images: Tensor | None = None) -> KeypointStats:
    """Key points of one multi-view sample (features (V, C, h, w), exact depths (V, H, W), the images (V, 3, H, W)
    when key points are to be placed at their corners) added to ``stats``: every ordered pair of views, i.e. both
    directions of each pair."""
    stats = stats if stats is not None else KeypointStats(tuple(thresholds))
    V = features.shape[0]
    size = tuple(depths.shape[-2:])
    kps = [keypoints2d(features[v].float(), size, max_keypoints, image=None if images is None else images[v])
           for v in range(V)]
    for a in range(V):
        for b in range(V):
            if a == b:
                continue
            vis, rep, cor = keypoint_pair(kps[a], kps[b], depths[a], depths[b], fxfycxcy[a], fxfycxcy[b], c2w[a],
                                          c2w[b], thresholds, occlusion_tol)
            stats.add(relative_rotation_deg(c2w[a], c2w[b]), vis, rep, cor, kps[a].xy.shape[0])
    return stats


# --------------------------------------------------------------------------------------------- synthetic scenes
def surface_points(images: Tensor, depths: Tensor, fxfycxcy: Tensor, c2w: Tensor, count: int,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` world points (and their colours) drawn from the pixels with depth of views (V, 3, H, W)."""
    V, _, H, W = images.shape
    where = (depths > 0).nonzero()  # (n, 3): view, row, col
    if where.shape[0] == 0:
        raise ManyviewError("the scene's views show no surface")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(where.shape[0], generator=g)[:count]
    v, r, c = where[pick].unbind(-1)
    uv = torch.stack((c.double() + 0.5, r.double() + 0.5), dim=-1)
    pts = torch.zeros(pick.shape[0], 3, dtype=torch.float64)  # one unprojection per view
    for view in range(V):
        m = v == view
        if m.any():
            pts[m] = unproject(uv[m], depths[view].double()[r[m], c[m]], fxfycxcy[view].double(), c2w[view].double())
    return pts.float(), images[v, :, r, c].float()


@dataclass
class SyntheticFeatureEval:
    scenes: int = 4
    """Held-out scenes per kind."""
    kinds: tuple[SceneKind, ...] = ("object", "room")
    views: int = 6
    size: int = 224
    grid_stride: int = 4
    """Dense features are resampled to an (size / grid_stride)-square grid before matching."""
    points: int = 4096
    """Surface points the 3D student sees per scene."""
    max_keypoints: int = 256
    supersample: int = 2
    first_scene: int = 0


def evaluate_synthetic(methods: Mapping[str, FeatureFn], cfg: SyntheticFeatureEval,
                       progress: Callable[[str], None] | None = None) -> dict:
    """{method: {"recall": table, "keypoints": table}} on held-out synthetic scenes."""
    from manyview.synth import generate

    recall = {name: CorrespondenceRecall() for name in methods}
    kstats = {name: KeypointStats() for name in methods}
    grid = (cfg.size // cfg.grid_stride, cfg.size // cfg.grid_stride)
    for kind in cfg.kinds:
        for i in range(cfg.first_scene, cfg.first_scene + cfg.scenes):
            kwargs = {"arc_deg": 360.0} if kind == "object" else {}
            _, views = generate(eval_scene_seed(i), kind, cfg.views, cfg.size, cfg.size, supersample=cfg.supersample,
                                **kwargs)
            images = views.images.float().clamp(0, 1)
            depths = views.depths.float()
            K, c2w = views.cameras.fxfycxcy.float(), views.cameras.c2w.float()
            points, colors = surface_points(images, depths, K, c2w, cfg.points, seed=i)
            for name, fn in methods.items():
                with torch.no_grad():
                    feats = fn(images, K, c2w, points, colors)
                multiview_recall(feats, depths, K, c2w, grid=grid, recall=recall[name])
                keypoint_stats(feats, depths, K, c2w, cfg.max_keypoints, stats=kstats[name], images=images)
            if progress is not None:
                progress(f"{kind} {i}")
    return {name: {"recall": recall[name].table(), "keypoints": kstats[name].table()} for name in methods}


# --------------------------------------------------------------------------------------------- real photos
def splatted_depth(points: Tensor, fxfycxcy: Tensor, c2w: Tensor, image_size: tuple[int, int],
                   radius_k: int = 8, opacity: float = 0.99, min_alpha: float = 0.5,
                   max_footprint: float = 2.0) -> Tensor:
    """(V, H, W) depth maps of the points themselves, each an opaque blob (radius from the point spacing, its
    footprint at most ``max_footprint`` pixels of the output: a stray point near a camera must not hide the
    scene), composited front to back; 0 where the accumulated opacity is below ``min_alpha``."""
    H, W = image_size
    radii = point_radii(points.float(), radius_k)
    out = []
    for v in range(fxfycxcy.shape[0]):
        _, z = project(points.float(), fxfycxcy[v].float(), invert_rigid(c2w[v].float()))
        r = torch.minimum(radii, max_footprint * z.clamp_min(1e-6) / fxfycxcy[v, :2].float().max())
        d, a = render_features(points.float(), z[:, None], r, torch.full_like(r, opacity), fxfycxcy[v:v + 1],
                               c2w[v:v + 1], H, W)
        out.append(torch.where(a[0] >= min_alpha, d[0, 0] / a[0].clamp_min(1e-6), torch.zeros_like(a[0])))
    return torch.stack(out)


def point_visibility(points: Tensor, fxfycxcy: Tensor, c2w: Tensor, image_size: tuple[int, int],
                     depth_grid: tuple[int, int], occlusion_tol: float = 0.1) -> tuple[Tensor, Tensor]:
    """Which views see which points (V, P) bool, and where they project (V, P, 2) pixels: inside the image, in
    front, and within ``occlusion_tol`` (relative) of the points' splatted depth (:func:`splatted_depth` on a
    ``depth_grid`` over the image)."""
    H, W = image_size
    h, w = depth_grid
    scale = fxfycxcy.new_tensor([w / W, h / H, w / W, h / H])
    depth = splatted_depth(points, fxfycxcy * scale, c2w, depth_grid)
    seen, uvs = [], []
    for v in range(fxfycxcy.shape[0]):
        uv, z = project(points.float(), fxfycxcy[v].float(), invert_rigid(c2w[v].float()))
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        col = (uv[:, 0] * w / W).floor().long().clamp(0, w - 1)
        row = (uv[:, 1] * h / H).floor().long().clamp(0, h - 1)
        d = depth[v][row, col]
        seen.append(inside & (d > 0) & ((z - d).abs() <= occlusion_tol * d))
        uvs.append(uv)
    return torch.stack(seen), torch.stack(uvs)


def point_correspondence_errors(feat_a: Tensor, feat_b: Tensor, uv_a: Tensor, uv_b: Tensor,
                                image_size: tuple[int, int], chunk: int = 4096) -> Tensor:
    """Pixel errors (Q,) of matching A's features sampled at uv_a (Q, 2) to their nearest neighbour (cosine) among
    B's cells, against the true positions uv_b (Q, 2); feature maps (C, h, w) over ``image_size`` images."""
    if uv_a.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    H, W = image_size
    q = F.normalize(sample_descriptors(feat_a.float(), uv_a.float(), (H, W)), dim=-1)
    fb = F.normalize(feat_b.flatten(1).T.float(), dim=-1)
    centres = cell_centres(*feat_b.shape[-2:], H, W, torch.float64)
    best = torch.cat([(q[i:i + chunk] @ fb.T).argmax(dim=1) for i in range(0, q.shape[0], chunk)])
    return (centres[best] - uv_b.double()).norm(dim=-1)


@dataclass
class RealFeatureEval:
    short_side: int = 224
    """The photos (and cameras) are resized so that their short side has this many pixels."""
    grid_stride: int = 4
    depth_stride: int = 4
    """The points' splatted depth (for visibility) is rendered on a grid of this stride."""
    occlusion_tol: float = 0.1
    max_views: int | None = None
    """Use the first views only (None: all)."""


def load_real_scene(folder: str | os.PathLike, short_side: int, max_views: int | None = None):
    """(images (V, 3, H, W), fxfycxcy (V, 4), c2w (V, 4, 4), points (P, 3), colours (P, 3) | None, names) of a
    reconstruction folder, resized to ``short_side``."""
    from manyview.io.dataset import detect_format, load_dataset, load_points

    folder = Path(folder)
    if not folder.exists():
        raise ManyviewError("no such reconstruction folder", folder)
    if detect_format(folder) == "images":
        raise ManyviewError("these photos have no cameras: run `manyview reconstruct PHOTOS --model colmap --out "
                            "DIR` first and pass DIR", folder)
    views = load_dataset(folder)
    if views.cameras is None:
        raise ManyviewError("no cameras here: run `manyview reconstruct --model colmap` first", folder)
    cloud = load_points(folder)
    if cloud is None or len(cloud) == 0:
        raise ManyviewError("this reconstruction has no points (the pseudo ground truth)", folder)
    if max_views is not None:
        views = views[list(range(min(max_views, len(views))))]
    H, W = views.height, views.width
    s = short_side / min(H, W)
    h, w = max(1, round(H * s)), max(1, round(W * s))
    images = F.interpolate(views.images.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    K = views.cameras.fxfycxcy.float() * torch.tensor([w / W, h / H, w / W, h / H])
    colors = None if cloud.rgb is None else cloud.rgb.float()
    return images.clamp(0, 1), K, views.cameras.c2w.float(), cloud.xyz.float(), colors, list(views.names)


def evaluate_real(methods: Mapping[str, FeatureFn], folder: str | os.PathLike, cfg: RealFeatureEval) -> dict:
    """{method: {"recall": table}, "info": {...}} on one reconstruction folder (see the module docstring)."""
    images, K, c2w, points, colors, names = load_real_scene(folder, cfg.short_side, cfg.max_views)
    V, _, H, W = images.shape
    depth_grid = (math.ceil(H / cfg.depth_stride), math.ceil(W / cfg.depth_stride))
    seen, uv = point_visibility(points, K, c2w, (H, W), depth_grid, cfg.occlusion_tol)
    grid = (H // cfg.grid_stride, W // cfg.grid_stride)
    out: dict = {"info": {"folder": str(folder), "views": V, "size": [H, W], "points": int(points.shape[0]),
                          "mean_views_seeing_a_point": float(seen.float().sum(0).mean())}}
    for name, fn in methods.items():
        with torch.no_grad():
            feats = resample(fn(images, K, c2w, points, colors), grid)
        recall = CorrespondenceRecall()
        for a in range(V):
            for b in range(a + 1, V):
                both = seen[a] & seen[b]
                errors = point_correspondence_errors(feats[a], feats[b], uv[a][both], uv[b][both], (H, W))
                recall.add(relative_rotation_deg(c2w[a], c2w[b]), errors)
        out[name] = {"recall": recall.table()}
    return out


# --------------------------------------------------------------------------------------------- the whole run
def evaluate_features(methods: Mapping[str, FeatureFn], synthetic: SyntheticFeatureEval | None = None,
                      real: Sequence[str | os.PathLike] = (), real_cfg: RealFeatureEval | None = None,
                      progress: Callable[[str], None] | None = None) -> dict:
    """{"synthetic": {method: ...}, "real": {folder name: {method: ...}}} (see the module docstring)."""
    report: dict = {"thresholds_px": list(THRESHOLDS_PX), "angle_bins_deg": [list(b) for b in ANGLE_BINS_DEG],
                    "keypoint_thresholds_px": list(KEYPOINT_THRESHOLDS_PX)}
    if synthetic is not None:
        report["synthetic"] = evaluate_synthetic(methods, synthetic, progress)
    if real:
        report["real"] = {}
        for folder in real:
            report["real"][Path(folder).name] = evaluate_real(methods, folder, real_cfg or RealFeatureEval())
            if progress is not None:
                progress(Path(folder).name)
    return report


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def recall_markdown(results: Mapping[str, dict], title: str, threshold: float = 10.0) -> str:
    """A table: one row per method, recall @5/10/20 in the 30-60 bin and @``threshold`` in every bin."""
    bins = [f"{lo:g}-{hi:g}" for lo, hi in ANGLE_BINS_DEG] + ["all"]
    head = f"| {title} | " + " | ".join(f"@{t:g} 30-60" for t in THRESHOLDS_PX) + " | " + \
        " | ".join(f"@{threshold:g} {b}" for b in bins) + " |"
    lines = [head, "|" + "---|" * (1 + len(THRESHOLDS_PX) + len(bins))]
    for name, res in results.items():
        if name == "info":
            continue
        t = res["recall"]
        cells = [_fmt(t["30-60"][f"recall@{x:g}"]) for x in THRESHOLDS_PX] + \
            [_fmt(t[b][f"recall@{threshold:g}"]) for b in bins]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def keypoint_markdown(results: Mapping[str, dict], title: str) -> str:
    """A table: one row per method, repeatability and matching score in the 30-60 bin and over all pairs."""
    cols = [(f"rep@{t:g} {b}", f"repeatability@{t:g}", b) for t in KEYPOINT_THRESHOLDS_PX for b in ("30-60", "all")]
    cols += [(f"MS@{t:g} {b}", f"matching_score@{t:g}", b) for t in KEYPOINT_THRESHOLDS_PX for b in ("30-60", "all")]
    lines = [f"| {title} | " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * (1 + len(cols))]
    for name, res in results.items():
        if "keypoints" not in res:
            continue
        t = res["keypoints"]
        lines.append(f"| {name} | " + " | ".join(_fmt(t[b][k]) for _, k, b in cols) + " |")
    return "\n".join(lines)


def markdown(report: Mapping) -> str:
    """Every table of a report (recall in %, key-point scores in %)."""
    parts = []
    if "synthetic" in report:
        parts.append(recall_markdown(report["synthetic"], "held-out synthetic: recall %"))
        parts.append(keypoint_markdown(report["synthetic"], "held-out synthetic: key points %"))
    for name, res in report.get("real", {}).items():
        parts.append(recall_markdown(res, f"{name} (SfM points): recall %"))
    return "\n\n".join(parts)


def synthetic_recall(feature_fn: Callable[[Tensor], Tensor], num_scenes: int = 4,
                     kinds: Sequence[SceneKind] = ("object", "room"), num_views: int = 6, size: int = 224,
                     grid_stride: int | None = 4, supersample: int = 2) -> CorrespondenceRecall:
    """Correspondence recall of ``feature_fn`` (images (V, 3, S, S) in [0, 1] -> features (V, C, h, w)) on
    ``num_scenes`` held-out scenes of each kind. ``grid_stride``: features are resampled to an
    (S / grid_stride)-square grid before matching (None: matched on their own grid)."""
    from manyview.synth import generate

    recall = CorrespondenceRecall()
    grid = None if grid_stride is None else (size // grid_stride, size // grid_stride)
    for kind in kinds:
        for i in range(num_scenes):
            kwargs = {"arc_deg": 360.0} if kind == "object" else {}
            _, views = generate(eval_scene_seed(i), kind, num_views, size, size, supersample=supersample, **kwargs)
            with torch.no_grad():
                feats = feature_fn(views.images.float().clamp(0, 1))
            cams = views.cameras
            multiview_recall(feats, views.depths.float(), cams.fxfycxcy.float(), cams.c2w.float(), grid=grid,
                             recall=recall)
    return recall


__all__ = ["FeatureFn", "KEYPOINT_THRESHOLDS_PX", "KeypointStats", "RealFeatureEval", "SyntheticFeatureEval",
           "evaluate_features", "evaluate_real", "evaluate_synthetic", "keypoint_pair", "keypoint_stats",
           "load_real_scene", "markdown", "model_methods", "point_correspondence_errors", "point_visibility",
           "rendered3d_method", "splatted_depth", "student2d_method", "surface_points", "synthetic_recall",
           "teacher_method"]
