"""Rotation representations: unit quaternions (w, x, y, z; the COLMAP and 3DGS order) and matrices.

Batched over leading dimensions and differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) quaternions (w, x, y, z), not necessarily unit -> (..., 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    Uses the numerically stable branch per element (largest diagonal term), as in Shepperd's method.
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate (unnormalised) quaternions; pick the best-conditioned one per element.
    t0 = 1 + m00 + m11 + m22
    t1 = 1 + m00 - m11 - m22
    t2 = 1 - m00 + m11 - m22
    t3 = 1 - m00 - m11 + m22
    cands = torch.stack(
        [
            torch.stack([t0, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], t1, m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], t2, m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], t3], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    best = torch.stack([t0, t1, t2, t3], -1).argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_angle(R: Tensor) -> Tensor:
    """(..., 3, 3) rotations -> their angle in radians, computed stably via atan2."""
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    skew = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    return torch.atan2(skew.norm(dim=-1), trace - 1)


def axis_angle_to_matrix(v: Tensor) -> Tensor:
    """(..., 3) axis-angle vectors -> (..., 3, 3) rotations (Rodrigues)."""
    theta = v.norm(dim=-1, keepdim=True)
    half = theta / 2
    # sin(x)/x is smooth at 0; use a series below a small angle for exact gradients there.
    small = theta < 1e-6
    sinc_half = torch.where(small, 0.5 - theta**2 / 48, torch.sin(half) / theta.clamp_min(1e-12))
    q = torch.cat([torch.cos(half), v * sinc_half], dim=-1)
    return quaternion_to_matrix(q)


def random_rotation(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """n rotations drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype)
    return quaternion_to_matrix(q)
