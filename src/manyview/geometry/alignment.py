"""Similarity alignment of point sets and the scale normalisation of pointmaps.

- ``umeyama``: closed-form weighted Sim(3) (Umeyama 1991) that maps ``src`` onto ``dst``; batched and
  differentiable (through ``torch.linalg.svd``; gradients are unreliable only when singular values repeat).
- ``normalize_pointmap``: the scale-invariant normalisation of DUSt3R / Fast3R training (divide by the mean
  distance to the origin of valid points, all views of a sample together).
- ``align_pointmaps_local_to_global``: Fast3R's per-view Sim(3) of the local-head pointmap onto the global one.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def umeyama(
    src: Tensor, dst: Tensor, weights: Tensor | None = None, with_scale: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity ``dst ≈ scale * R @ src + t``.

    src, dst: (..., P, 3); weights: (..., P) non-negative (None = uniform).
    Returns scale (...), R (..., 3, 3) with det(R) = +1, t (..., 3). ``with_scale=False`` gives the rigid fit.
    """
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"src and dst must both be (..., P, 3), got {tuple(src.shape)} and {tuple(dst.shape)}")
    if weights is None:
        weights = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    w = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(src.dtype).tiny)
    mu_s = torch.einsum("...p,...pi->...i", w, src)
    mu_d = torch.einsum("...p,...pi->...i", w, dst)
    s_c, d_c = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = torch.einsum("...p,...pi,...pj->...ij", w, d_c, s_c)  # (..., 3, 3) = E[dst_c src_c^T]
    U, S, Vh = torch.linalg.svd(cov)
    # Reflection guard: flip the last singular direction when U Vh would be a reflection.
    sign = torch.where(torch.linalg.det(U) * torch.linalg.det(Vh) < 0, -1.0, 1.0).to(src.dtype)
    D = torch.ones_like(S)
    D = torch.cat([D[..., :2], sign[..., None]], dim=-1)
    R = U @ (D[..., :, None] * Vh)
    if with_scale:
        var_s = torch.einsum("...p,...pi->...", w, s_c * s_c)
        scale = (S * D).sum(-1) / var_s.clamp_min(torch.finfo(src.dtype).tiny)
    else:
        scale = torch.ones_like(S[..., 0])
    t = mu_d - scale[..., None] * (R @ mu_s[..., None])[..., 0]
    return scale, R, t


def apply_sim3(points: Tensor, scale: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """``scale * R @ p + t`` for points (..., P, 3) with scale (...), R (..., 3, 3), t (..., 3)."""
    scale = torch.as_tensor(scale, dtype=points.dtype, device=points.device)
    rotated = points @ R.transpose(-1, -2)
    return scale[..., None, None] * rotated + t[..., None, :]


def quantile_last(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values, q, dim=-1)`` (linear interpolation) without torch.quantile's 16M-element cap."""
    n = values.shape[-1]
    sorted_v = values.sort(dim=-1).values
    pos = torch.tensor(q, dtype=values.dtype, device=values.device) * (n - 1)  # rank arithmetic as torch does it
    below = pos.floor()
    lo = int(below)
    hi = min(lo + 1, n - 1)
    return torch.lerp(sorted_v[..., lo], sorted_v[..., hi], pos - below)


def percentile_mask(conf: Tensor, percentile: float) -> Tensor:
    """(..., H, W) bool: ``conf >= its own percentile`` per map (the DUSt3R / Fast3R confidence filter)."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    thr = quantile_last(conf.flatten(-2), percentile / 100.0)
    return conf >= thr[..., None, None]


NormMode = Literal["mean_distance", "median_distance"]


def normalize_pointmap(
    pts: Tensor, valid_mask: Tensor | None = None, mode: NormMode = "mean_distance", per_view: bool = False
) -> tuple[Tensor, Tensor]:
    """Divide pointmaps by their mean (or median) distance to the origin over valid pixels.

    pts: (..., N, H, W, 3), N views of one sample; valid_mask: (..., N, H, W) bool (None = all valid).
    The factor is computed over all N views together (Fast3R's global normalisation) or per view with
    ``per_view=True`` (its local-head normalisation); it is clipped at 1e-8 and every point, valid or not, is
    divided by it. Returns (normalised pts, scale) with scale (...) or (..., N) for ``per_view``.
    """
    if pts.dim() < 4 or pts.shape[-1] != 3:
        raise ValueError(f"pts must be (..., N, H, W, 3), got {tuple(pts.shape)}")
    dist = pts.norm(dim=-1)  # (..., N, H, W)
    if valid_mask is not None:
        dist = torch.where(valid_mask, dist, torch.full_like(dist, float("nan")))
    flat = dist.flatten(-2) if per_view else dist.flatten(-3)
    if mode == "mean_distance":
        factor = flat.nanmean(dim=-1)
    elif mode == "median_distance":
        factor = flat.nanmedian(dim=-1).values
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}")
    factor = factor.clip(min=1e-8)
    view = factor[..., None, None, None] if per_view else factor[..., None, None, None, None]
    return pts / view, factor


def align_pointmaps_local_to_global(
    local: Tensor,
    global_: Tensor,
    confidence: Tensor | None = None,
    min_conf_percentile: float = 85.0,
    weighted: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-view Sim(3) that carries each local-head pointmap onto the global-head one (same pixels pair up).

    local, global_: (..., H, W, 3), each leading index one view; confidence: (..., H, W) global-head
    confidence. Pixels with confidence >= the view's ``min_conf_percentile`` take part (Fast3R's
    ``align_local_pts3d_to_global``, unweighted, 85 in its demo); ``weighted=True`` also weights them by confidence.
    A view with fewer than 3 selected pixels uses all its pixels.
    Returns (aligned local pointmaps (..., H, W, 3), scale (...), R (..., 3, 3), t (..., 3)).
    """
    if local.shape != global_.shape or local.shape[-1] != 3 or local.dim() < 3:
        raise ValueError(f"local and global pointmaps must both be (..., H, W, 3), got "
                         f"{tuple(local.shape)} and {tuple(global_.shape)}")
    src, dst = local.flatten(-3, -2), global_.flatten(-3, -2)  # (..., HW, 3)
    if confidence is None:
        w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    else:
        mask = percentile_mask(confidence, min_conf_percentile).flatten(-2)
        too_few = mask.sum(-1, keepdim=True) < 3
        mask = mask | too_few
        w = mask.to(src.dtype) * (confidence.flatten(-2).to(src.dtype) if weighted else 1.0)
    scale, R, t = umeyama(src, dst, w)
    return apply_sim3(src, scale, R, t).reshape(local.shape), scale, R, t
