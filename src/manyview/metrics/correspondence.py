"""Dense correspondence recall of features between views (Probe3D style), checked with depth and cameras.

For two views A and B with dense features, every feature cell of A whose centre pixel has depth is lifted to 3D with
A's depth and camera and projected into B; it counts when it lands inside B and is visible there (B's depth at that
pixel agrees with the projected depth within ``occlusion_tol`` relative). Its match is the cell of B with the most
similar feature (cosine similarity, nearest neighbour over all of B); the error is the distance in B's image pixels
between the match's cell centre and the true projection. Recall at t pixels is the fraction of counted cells whose
error is below t, pooled over the pairs of an angle bin; the angle of a pair is the rotation between its cameras.

Features of any stride are accepted: a cell of an (h, w) grid over an H x W image is centred at
((j + 0.5) W / w, (i + 0.5) H / h) (COLMAP pixel convention). ``grid`` resamples features bilinearly to one grid
first, so networks of different strides are compared at the same match resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.geometry.projection import project, unproject
from manyview.geometry.rotation import rotation_angle
from manyview.geometry.transforms import invert_rigid

THRESHOLDS_PX = (5.0, 10.0, 20.0)
ANGLE_BINS_DEG = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0), (60.0, 180.0))


def cell_centres(h: int, w: int, height: int, width: int, dtype=torch.float32, device=None) -> Tensor:
    """(h*w, 2) pixel coordinates (u, v) of the centres of an h x w feature grid over a height x width image."""
    v = (torch.arange(h, dtype=dtype, device=device) + 0.5) * (height / h)
    u = (torch.arange(w, dtype=dtype, device=device) + 0.5) * (width / w)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack((uu.reshape(-1), vv.reshape(-1)), dim=-1)


def _depth_at(depth: Tensor, uv: Tensor) -> Tensor:
    """Depth (H, W) at the pixels containing uv (P, 2); 0 outside the image."""
    H, W = depth.shape
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    out = torch.zeros(uv.shape[0], dtype=depth.dtype, device=depth.device)
    out[inside] = depth[row[inside], col[inside]]
    return out


def relative_rotation_deg(c2w_a: Tensor, c2w_b: Tensor) -> float:
    """Angle in degrees of the rotation between two camera poses (4, 4)."""
    return float(torch.rad2deg(rotation_angle(c2w_a[:3, :3].double().T @ c2w_b[:3, :3].double())))


def correspondence_errors(feat_a: Tensor, feat_b: Tensor, depth_a: Tensor, depth_b: Tensor, fxfycxcy_a: Tensor,
                          fxfycxcy_b: Tensor, c2w_a: Tensor, c2w_b: Tensor, occlusion_tol: float = 0.05,
                          chunk: int = 4096) -> Tensor:
    """Pixel errors (Q,) of the nearest-neighbour matches from A to B of every A cell visible in B.

    feat_* (C, h, w) on their own grids; depth_* (H, W) z-depth, 0 where unknown; fxfycxcy_* (4,) pixels of the
    depth maps' images; c2w_* (4, 4)."""
    Ha, Wa = depth_a.shape
    Hb, Wb = depth_b.shape
    fa = F.normalize(feat_a.flatten(1).T.float(), dim=-1)  # (Ma, C)
    fb = F.normalize(feat_b.flatten(1).T.float(), dim=-1)  # (Mb, C)
    uv_a = cell_centres(*feat_a.shape[-2:], Ha, Wa, torch.float64, feat_a.device)
    uv_b_cells = cell_centres(*feat_b.shape[-2:], Hb, Wb, torch.float64, feat_b.device)

    d_a = _depth_at(depth_a.double(), uv_a)
    world = unproject(uv_a, d_a, fxfycxcy_a.double(), c2w_a.double())
    uv_true, z = project(world, fxfycxcy_b.double(), invert_rigid(c2w_b.double()))
    d_b = _depth_at(depth_b.double(), uv_true)
    visible = (d_a > 0) & (z > 0) & (d_b > 0) & ((d_b - z).abs() <= occlusion_tol * z)
    idx = visible.nonzero()[:, 0]
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=feat_a.device)
    best = torch.cat([(fa[idx[i: i + chunk]] @ fb.T).argmax(dim=1) for i in range(0, idx.numel(), chunk)])
    return (uv_b_cells[best] - uv_true[idx]).norm(dim=-1)


def resample(features: Tensor, grid: tuple[int, int] | None) -> Tensor:
    """Features (..., C, h, w) bilinearly resampled to ``grid`` (h', w'); unchanged when ``grid`` is None."""
    if grid is None or tuple(features.shape[-2:]) == tuple(grid):
        return features
    lead = features.shape[:-3]
    out = F.interpolate(features.reshape(-1, *features.shape[-3:]).float(), size=grid, mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *out.shape[-3:])


@dataclass
class CorrespondenceRecall:
    """Pooled errors per angle bin; ``table()`` gives recall per threshold and bin."""

    thresholds: tuple[float, ...] = THRESHOLDS_PX
    bins: tuple[tuple[float, float], ...] = ANGLE_BINS_DEG
    errors: dict[tuple[float, float], list[Tensor]] = field(default_factory=dict)
    pairs: dict[tuple[float, float], int] = field(default_factory=dict)

    def bin_of(self, angle: float) -> tuple[float, float] | None:
        for lo, hi in self.bins:
            if lo <= angle < hi or (hi == self.bins[-1][1] and angle == hi):
                return lo, hi
        return None

    def add(self, angle_deg: float, errors: Tensor) -> None:
        b = self.bin_of(angle_deg)
        if b is None:
            return
        self.errors.setdefault(b, []).append(errors.detach().double().cpu())
        self.pairs[b] = self.pairs.get(b, 0) + 1

    def table(self) -> dict[str, dict[str, float]]:
        """{bin label ('0-15', ..., 'all'): {'recall@5': r, ..., 'matches': Q, 'pairs': n}}; recall is NaN for a
        bin without counted cells."""
        out = {}
        groups = [(f"{lo:g}-{hi:g}", [(lo, hi)]) for lo, hi in self.bins] + [("all", list(self.bins))]
        for label, members in groups:
            errs = [e for b in members for e in self.errors.get(b, [])]
            e = torch.cat(errs) if errs else torch.zeros(0, dtype=torch.float64)
            row = {f"recall@{t:g}": float((e < t).double().mean()) if e.numel() else float("nan")
                   for t in self.thresholds}
            row["matches"] = float(e.numel())
            row["pairs"] = float(sum(self.pairs.get(b, 0) for b in members))
            out[label] = row
        return out


def multiview_recall(features: Tensor, depths: Tensor, fxfycxcy: Tensor, c2w: Tensor,
                     pairs: Sequence[tuple[int, int]] | None = None, grid: tuple[int, int] | None = None,
                     recall: CorrespondenceRecall | None = None, occlusion_tol: float = 0.05) -> CorrespondenceRecall:
    """Add the pairs of one multi-view sample to ``recall`` (a new one when None) and return it.

    features (V, C, h, w); depths (V, H, W); fxfycxcy (V, 4); c2w (V, 4, 4); pairs: ordered (a, b) view pairs,
    all a < b by default; grid: resample every feature map to this grid first."""
    recall = recall if recall is not None else CorrespondenceRecall()
    V = features.shape[0]
    feats = resample(features, grid)
    pairs = pairs if pairs is not None else [(a, b) for a in range(V) for b in range(a + 1, V)]
    for a, b in pairs:
        errors = correspondence_errors(feats[a], feats[b], depths[a], depths[b], fxfycxcy[a], fxfycxcy[b], c2w[a],
                                       c2w[b], occlusion_tol)
        recall.add(relative_rotation_deg(c2w[a], c2w[b]), errors)
    return recall


__all__ = ["ANGLE_BINS_DEG", "CorrespondenceRecall", "THRESHOLDS_PX", "cell_centres", "correspondence_errors",
           "multiview_recall", "relative_rotation_deg", "resample"]
