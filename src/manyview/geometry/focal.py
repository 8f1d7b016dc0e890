"""Focal length from a pointmap in its own camera frame (DUSt3R / Fast3R post-processing).

The pinhole model says pixel - pp = f * (x/z, y/z). DUSt3R solves for one shared focal with a robust L1 fit:
an L2 closed-form start, f0 = sum <xy/z, px> / sum |xy/z|^2, then Weiszfeld iteratively re-weighted least
squares with weights 1 / max(|px - f xy/z|, 1e-8). Points with z = 0 contribute xy/z = 0 (nan_to_num), as there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manyview.geometry.rays import pixel_grid


def estimate_focal_weiszfeld(
    pointmap: Tensor,
    mask: Tensor | None = None,
    principal_point: Tensor | None = None,
    iterations: int = 100,
    offset: float = 0.0,
) -> Tensor:
    """Pointmap (..., H, W, 3) in camera coordinates -> focal (...) in pixels.

    mask: (..., H, W) bool, pixels to use (None = all). principal_point: (..., 2) (u, v) in the same pixel
    coordinates as the grid; default (W/2, H/2). ``offset`` places pixel (i, j) at (j + offset, i + offset):
    0.0 is the DUSt3R / Fast3R grid (integer indices, so the default pp sits half a pixel right/below the true
    centre, exactly as there); 0.5 is manyview's convention, where (W/2, H/2) is the true image centre.
    A pointmap with no usable pixel gets DUSt3R's fallback focal max(H, W) / (2 tan 30°).
    Computed in the pointmap's dtype, like the reference.
    """
    if pointmap.dim() < 3 or pointmap.shape[-1] != 3:
        raise ValueError(f"pointmap must be (..., H, W, 3), got {tuple(pointmap.shape)}")
    h, w = pointmap.shape[-3:-1]
    dtype, device = pointmap.dtype, pointmap.device
    batch = pointmap.shape[:-3]
    if principal_point is None:
        principal_point = torch.tensor([w / 2, h / 2], dtype=dtype, device=device)
    pp = torch.as_tensor(principal_point).to(device=device, dtype=dtype).expand(batch + (2,))
    px = pixel_grid(h, w, offset, dtype, device) - pp[..., None, None, :]  # (..., H, W, 2)
    xy = (pointmap[..., :2] / pointmap[..., 2:3]).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    m = torch.ones(pointmap.shape[:-1], dtype=dtype, device=device) if mask is None else mask.to(dtype)
    m = m.expand(pointmap.shape[:-1]).flatten(-2)
    xy, px = xy.flatten(-3, -2), px.flatten(-3, -2)  # (..., HW, 2)
    dot_xy_px = (xy * px).sum(-1)
    dot_xy_xy = xy.square().sum(-1)
    focal = (m * dot_xy_px).sum(-1) / (m * dot_xy_xy).sum(-1)
    for _ in range(iterations):
        dist = (px - focal[..., None, None] * xy).norm(dim=-1)
        weight = m / dist.clip(min=1e-8)
        focal = (weight * dot_xy_px).sum(-1) / (weight * dot_xy_xy).sum(-1)
    fallback = max(h, w) / (2 * math.tan(math.radians(60) / 2))
    focal = torch.where(m.sum(-1) > 0, focal, torch.full_like(focal, fallback))
    return focal.clamp_min(0.0)
