"""Pixel grids, camera rays and their Plücker embedding.

Pixel convention: with ``offset=0.5`` (the default) pixel (i, j) is sampled at its centre (j + 0.5, i + 0.5),
matching intrinsics in which the image spans [0, W] x [0, H] (COLMAP, OpenCV calibration, LVSM). DUSt3R-family
code samples at integer indices: pass ``offset=0.0`` there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def pixel_grid(height: int, width: int, offset: float = 0.5, dtype=torch.float32, device=None) -> Tensor:
    """(H, W, 2) pixel coordinates (u, v) = (x, y)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + offset,
        torch.arange(width, dtype=dtype, device=device) + offset,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def camera_directions(fxfycxcy: Tensor, height: int, width: int, offset: float = 0.5) -> Tensor:
    """(..., H, W, 3) un-normalised ray directions in the camera frame, z = 1."""
    uv = pixel_grid(height, width, offset, fxfycxcy.dtype, fxfycxcy.device)
    f = fxfycxcy[..., None, None, :]
    x = (uv[..., 0] - f[..., 2]) / f[..., 0]
    y = (uv[..., 1] - f[..., 3]) / f[..., 1]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def pixel_rays(
    fxfycxcy: Tensor, c2w: Tensor, height: int, width: int, offset: float = 0.5, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel: origins and directions, each (..., H, W, 3)."""
    d_cam = camera_directions(fxfycxcy, height, width, offset)
    R = c2w[..., None, None, :3, :3]
    d = (R @ d_cam[..., None])[..., 0]
    if normalize:
        d = torch.nn.functional.normalize(d, dim=-1)
    o = c2w[..., None, None, :3, 3].expand(d.shape)
    return o, d


PluckerOrder = Literal["moment_direction", "direction_moment"]


def plucker_embedding(origins: Tensor, directions: Tensor, order: PluckerOrder = "moment_direction") -> Tensor:
    """(..., 6) Plücker coordinates of rays.

    ``moment_direction`` gives [o x d, d] (LVSM, Efficient-LVSM); ``direction_moment`` gives [d, o x d]
    (CAT3D, most camera-conditioned diffusion models). Directions should be unit length for the moment to be
    the ray's distance-weighted normal.
    """
    moment = torch.cross(origins, directions, dim=-1)
    if order == "moment_direction":
        return torch.cat([moment, directions], dim=-1)
    if order == "direction_moment":
        return torch.cat([directions, moment], dim=-1)
    raise ValueError(f"unknown Plücker order {order!r}")
