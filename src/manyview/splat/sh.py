"""Real spherical harmonics up to degree 3, with the constants and sign conventions of 3DGS.

A Gaussian's colour seen along the unit direction d (from the camera centre to the Gaussian) is
``max(sum_k sh[k] * Y_k(d) + 0.5, 0)``; the +0.5 and the clamp are how 3DGS (and gsplat) define it, so a
Gaussian whose coefficients are all zero is mid grey. Coefficients are stored (P, K, 3) with K = (degree + 1)^2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)

MAX_DEGREE = 3


def num_coefficients(degree: int) -> int:
    return (degree + 1) ** 2


def degree_from_coefficients(k: int) -> int:
    """K = (degree + 1)^2 -> degree; ValueError for a K that is not a square of 1..4."""
    d = math.isqrt(k) - 1
    if k < 1 or (d + 1) ** 2 != k or d > MAX_DEGREE:
        raise ValueError(f"{k} SH coefficients per channel is not (degree + 1)^2 for a degree in 0..{MAX_DEGREE}")
    return d


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> the DC coefficient that renders it (before the +0.5 offset)."""
    return (rgb - 0.5) / C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    return dc * C0 + 0.5


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Unit directions (..., 3) -> basis values (..., (degree + 1)^2), 3DGS ordering and signs."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, -1)


def eval_sh(sh: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colours (..., 3) = max(sum_k sh[..., k, :] * Y_k(d) + 0.5, 0).

    ``sh`` (..., K, 3) with K >= (degree + 1)^2 (extra coefficients are ignored); ``dirs`` (..., 3) need not be
    unit length (they are normalised here, so the gradient reaches the Gaussian means through them).
    """
    k = num_coefficients(degree)
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(d, degree)  # (..., k)
    return ((basis[..., None] * sh[..., :k, :]).sum(-2) + 0.5).clamp_min(0.0)
