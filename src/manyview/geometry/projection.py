"""Projection, unprojection and depth <-> pointmap conversions (pinhole, OpenCV axes)."""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.geometry.rays import camera_directions
from manyview.geometry.transforms import invert_rigid


def project(points: Tensor, fxfycxcy: Tensor, w2c: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """World points (..., P, 3) -> pixel coordinates (..., P, 2) and camera z-depth (..., P).

    ``fxfycxcy`` (..., 4) and ``w2c`` (..., 4, 4) share the leading dimensions of ``points``.
    Points behind the camera get their depth returned as is (<= 0); their pixels are not meaningful.
    """
    R, t = w2c[..., None, :3, :3], w2c[..., None, :3, 3]
    cam = (R @ points[..., None])[..., 0] + t
    z = cam[..., 2]
    safe_z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    f = fxfycxcy[..., None, :]
    u = f[..., 0] * cam[..., 0] / safe_z + f[..., 2]
    v = f[..., 1] * cam[..., 1] / safe_z + f[..., 3]
    return torch.stack([u, v], dim=-1), z


def unproject(uv: Tensor, depth: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> Tensor:
    """Pixels (..., P, 2) with z-depth (..., P) -> world points (..., P, 3)."""
    f = fxfycxcy[..., None, :]
    x = (uv[..., 0] - f[..., 2]) / f[..., 0] * depth
    y = (uv[..., 1] - f[..., 3]) / f[..., 1] * depth
    cam = torch.stack([x, y, depth], dim=-1)
    return (c2w[..., None, :3, :3] @ cam[..., None])[..., 0] + c2w[..., None, :3, 3]


def depth_to_pointmap(depth: Tensor, fxfycxcy: Tensor, c2w: Tensor | None = None, offset: float = 0.5) -> Tensor:
    """z-depth (..., H, W) -> pointmap (..., H, W, 3); in the camera frame when ``c2w`` is None."""
    h, w = depth.shape[-2:]
    cam = camera_directions(fxfycxcy, h, w, offset) * depth[..., None]
    if c2w is None:
        return cam
    return (c2w[..., None, None, :3, :3] @ cam[..., None])[..., 0] + c2w[..., None, None, :3, 3]


def pointmap_to_depth(pointmap: Tensor, c2w: Tensor | None = None) -> Tensor:
    """World pointmap (..., H, W, 3) -> z-depth (..., H, W) in the camera given by ``c2w`` (camera frame if None)."""
    if c2w is None:
        return pointmap[..., 2]
    w2c = invert_rigid(c2w)
    cam = (w2c[..., None, None, :3, :3] @ pointmap[..., None])[..., 0] + w2c[..., None, None, :3, 3]
    return cam[..., 2]
