"""2D features lifted onto 3D points: each point's feature is the mean of the 2D features of the views that see it.

The baseline 3D features of ``manyview features`` without a trained ConDense model (OpenScene's multi-view fusion,
reference/condense.md §3, in its simplest form). A point is seen by a view when it projects inside the image, in
front of the camera, and is not hidden: with depth maps, its depth is within ``rel_tol`` of the map's there;
without, within ``rel_tol`` of the nearest point that projects into the same feature cell (a z-buffer of the points
themselves on the feature grid).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from manyview.features.keypoints import sample_descriptors
from manyview.geometry.projection import project
from manyview.geometry.transforms import invert_rigid


def visible_points(points: Tensor, fxfycxcy: Tensor, c2w: Tensor, image_size: tuple[int, int],
                   grid: tuple[int, int], depth: Tensor | None = None, rel_tol: float = 0.05,
                   near: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Which points (P, 3) one camera (fxfycxcy (4,), c2w (4, 4), image (H, W)) sees: (seen (P,) bool, uv (P, 2)
    pixels). ``depth`` (H, W), 0 where unknown, or None (z-buffer of the points on the h x w ``grid``)."""
    H, W = image_size
    uv, z = project(points.float(), fxfycxcy.float(), invert_rigid(c2w.float()))
    seen = (z > near) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    if depth is not None:
        col = uv[:, 0].floor().long().clamp(0, W - 1)
        row = uv[:, 1].floor().long().clamp(0, H - 1)
        d = depth.float()[row, col]
        return seen & (d > 0) & ((z - d).abs() <= rel_tol * d), uv
    h, w = grid
    col = (uv[:, 0] * w / W).floor().long().clamp(0, w - 1)
    row = (uv[:, 1] * h / H).floor().long().clamp(0, h - 1)
    cell = row * w + col
    zbuf = torch.full((h * w,), float("inf"), device=points.device)
    zbuf.scatter_reduce_(0, cell[seen], z[seen], reduce="amin")
    return seen & (z <= zbuf[cell] * (1 + rel_tol)), uv


def lift_features(points: Tensor, feature_maps: Sequence[Tensor] | Tensor, fxfycxcy: Tensor, c2w: Tensor,
                  image_size: tuple[int, int], depths: Tensor | None = None,
                  rel_tol: float = 0.05) -> tuple[Tensor, Tensor]:
    """Per-point features (P, C): the mean over the views that see each point of the view's feature map (C, h, w),
    sampled bilinearly at the point's projection; 0 for points no view sees. Also returns the view counts (P,).
    Cameras fxfycxcy (V, 4) and c2w (V, 4, 4) are for ``image_size`` (H, W) images; depths (V, H, W) or None."""
    C = feature_maps[0].shape[0]
    total = points.new_zeros(points.shape[0], C, dtype=torch.float32)
    count = points.new_zeros(points.shape[0], dtype=torch.float32)
    for v, fmap in enumerate(feature_maps):
        seen, uv = visible_points(points, fxfycxcy[v], c2w[v], image_size, tuple(fmap.shape[-2:]),
                                  None if depths is None else depths[v], rel_tol)
        if seen.any():
            total[seen] += sample_descriptors(fmap.float(), uv[seen], image_size)
            count += seen.float()
    return total / count.clamp_min(1)[:, None], count


def pca_project(features: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``dim`` principal components of rows (N, C): (projected (N, dim), mean (C,), basis (C, dim)),
    basis columns by decreasing variance, each with its largest entry positive (a deterministic sign)."""
    x = features.double()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    basis = vh[:dim].T
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    basis = basis * torch.where(sign == 0, torch.ones_like(sign), sign)
    return ((x - mean) @ basis).to(features.dtype), mean.to(features.dtype), basis.to(features.dtype)


def apply_pca(feature_map: Tensor, mean: Tensor, basis: Tensor) -> Tensor:
    """A feature map (C, h, w) in the PCA basis of :func:`pca_project`: (dim, h, w)."""
    C, h, w = feature_map.shape
    flat = feature_map.reshape(C, -1).T.to(basis.dtype)
    return ((flat - mean) @ basis).T.reshape(-1, h, w).to(feature_map.dtype)


__all__ = ["apply_pca", "lift_features", "pca_project", "visible_points"]
