"""Rigid and similarity transforms as (..., 4, 4) matrices."""

from __future__ import annotations

import torch
from torch import Tensor


def rigid(R: Tensor, t: Tensor) -> Tensor:
    """(..., 4, 4) homogeneous transform from R (..., 3, 3) and t (..., 3)."""
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros(R.shape[:-2] + (1, 4), dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def invert_rigid(T: Tensor) -> Tensor:
    """Invert (..., 4, 4) rigid transforms exactly (a transpose, not a general matrix inverse)."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return rigid(Rt, -(Rt @ T[..., :3, 3:4])[..., 0])


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Apply (4, 4) or (B, 4, 4) transforms to points (..., 3).

    With a batched T of shape (B, 4, 4) the points must have a leading B: (B, ..., 3).
    """
    R, t = T[..., :3, :3], T[..., :3, 3]
    if T.dim() == 2:
        return points @ R.transpose(-1, -2) + t
    flat = points.reshape(points.shape[0], -1, 3)
    out = flat @ R.transpose(-1, -2) + t[:, None]
    return out.reshape(points.shape)
