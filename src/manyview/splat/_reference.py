"""The float64 PyTorch reference renderer: short, dense, differentiable by autograd; the ground truth in tests.

No tiles and no custom backward: every pixel looks at every Gaussian (in pixel chunks to bound memory), with
the thresholds and early termination written as masks on a cumulative product, so it defines the semantics in
``manyview.splat.types`` directly. Slow and memory hungry by design.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.scene import Cameras
from manyview.splat import backend
from manyview.splat.backend import RenderSettings, StagedBackend
from manyview.splat.gaussians import GaussianStore
from manyview.splat.types import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    EXTENT_SIGMA,
    FOV_CLAMP,
    T_MIN,
    Projected,
)


def _safe(mask: Tensor, x: Tensor, fill: float = 1.0) -> Tensor:
    """x where mask else fill: keeps culled entries finite so that masked-out branches get no NaN gradients."""
    return torch.where(mask, x, torch.full_like(x, fill))


def project(g: GaussianStore, cameras: Cameras, mode: str = "classic", near: float = 0.01,
            far: float = 1e10) -> Projected:
    """Gaussians (P) x cameras (C,) -> screen-space :class:`Projected`."""
    w2c = cameras.w2c  # (C, 4, 4)
    Rv, tv = w2c[:, :3, :3], w2c[:, :3, 3]
    pc = torch.einsum("cij,pj->cpi", Rv, g.means) + tv[:, None]  # (C, P, 3) camera coordinates
    x, y, z = pc.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    zs = _safe(in_depth, z)
    fx, fy, cx, cy = (v[:, None] for v in cameras.fxfycxcy.unbind(-1))
    h, w = (v[:, None].to(pc.dtype) for v in cameras.image_size.unbind(-1))

    # 3DGS Jacobian of the perspective map, evaluated at a point clamped to 1.3x the field of view.
    margin_x, margin_y = (FOV_CLAMP - 1) * 0.5 * w / fx, (FOV_CLAMP - 1) * 0.5 * h / fy
    tx = zs * torch.clamp(x / zs, -(cx / fx + margin_x), (w - cx) / fx + margin_x)
    ty = zs * torch.clamp(y / zs, -(cy / fy + margin_y), (h - cy) / fy + margin_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).unflatten(-1, (2, 3))

    rot = g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    qw, qx, qy, qz = rot.unbind(-1)
    R = torch.stack([
        1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
        2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
        2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy),
    ], -1).unflatten(-1, (3, 3))
    M = R * g.log_scales.exp()[:, None, :]
    cov3 = M @ M.transpose(-1, -2)  # (P, 3, 3) world covariance
    cov_cam = Rv[:, None] @ cov3[None] @ Rv[:, None].transpose(-1, -2)  # (C, P, 3, 3)
    cov2 = J @ cov_cam @ J.transpose(-1, -2)  # (C, P, 2, 2)
    a, b, c = cov2[..., 0, 0], cov2[..., 0, 1], cov2[..., 1, 1]
    det0 = a * c - b * b
    a, c = a + EPS2D, c + EPS2D
    det = a * c - b * b
    opacity = torch.sigmoid(g.opacity_logits)[None].expand_as(z)
    if mode == "antialiased":
        ratio = det0 / det
        ok = ratio > 0
        opacity = opacity * torch.where(ok, _safe(ok, ratio).sqrt(), torch.zeros_like(ratio))
    valid = in_depth & (det > 0) & (opacity >= ALPHA_MIN)
    dets = _safe(valid, det)
    conics = torch.stack([c / dets, -b / dets, a / dets], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)

    with torch.no_grad():
        k = torch.sqrt(2 * torch.log(255 * _safe(valid, opacity))).clamp(max=EXTENT_SIGMA)
        rx, ry = k * _safe(valid, a).sqrt(), k * _safe(valid, c).sqrt()
        mx, my = means2d.unbind(-1)
        on_image = (mx + rx >= 0.5) & (mx - rx <= w - 0.5) & (my + ry >= 0.5) & (my - ry <= h - 0.5)
        valid = valid & on_image
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d))
    return Projected(means2d, conics, z, opacity, radii)


def rasterize_pixels(proj: Projected, features: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Composite per camera-Gaussian ``features`` (C, P, D) at pixel coordinates ``pixels`` (N, 2) (x, y; pixel
    centres are at +0.5) -> accumulated (C, N, D) and alpha (C, N). Every pixel against every Gaussian."""
    accum, alphas = [], []
    for ci in range(features.shape[0]):
        order = torch.argsort(proj.depths[ci].detach(), stable=True)
        m2d, con, opa, rad = (t[ci, order] for t in (proj.means2d, proj.conics, proj.opacities, proj.radii))
        d = pixels[:, None, :] - m2d[None]  # (N, P, 2)
        dx, dy = d.unbind(-1)
        power = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
        raw = opa * torch.exp(-power)
        with torch.no_grad():
            visible = (rad > 0).all(-1)
            keep = visible & (dx.abs() <= rad[:, 0]) & (dy.abs() <= rad[:, 1]) & (power >= 0) & (raw >= ALPHA_MIN)
        alpha = torch.where(keep, raw.clamp(max=ALPHA_MAX), torch.zeros_like(raw))
        t_after = torch.cumprod(1 - alpha, dim=1)
        t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
        weight = torch.where(t_after.detach() >= T_MIN, alpha * t_before, torch.zeros_like(alpha))
        accum.append(weight @ features[ci, order])
        alphas.append(weight.sum(1))
    return torch.stack(accum), torch.stack(alphas)


def rasterize(proj: Projected, features: Tensor, height: int, width: int,
              pixel_chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Composite per camera-Gaussian ``features`` (C, P, D) -> accumulated (C, H, W, D) and alpha (C, H, W),
    ``pixel_chunk`` pixels at a time."""
    C, P, D = features.shape
    dtype, device = features.dtype, features.device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                            torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)  # (HW, 2)
    parts = [rasterize_pixels(proj, features, pix[s:s + pixel_chunk]) for s in range(0, pix.shape[0], pixel_chunk)]
    accum = torch.cat([a for a, _ in parts], dim=1).reshape(C, height, width, D)
    alpha = torch.cat([b for _, b in parts], dim=1).reshape(C, height, width)
    return accum, alpha


class ReferenceBackend(StagedBackend):
    """Computes in float64 whatever the input; returns the Gaussians' own dtype."""

    name = "reference"
    compute_dtype = torch.float64

    def output_dtype(self, gaussians: GaussianStore) -> torch.dtype:
        return gaussians.means.dtype

    def project(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings) -> Projected:
        return project(gaussians, cameras, settings.mode, settings.near, settings.far)

    def shade(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings, proj: Projected) -> Tensor:
        return backend.shade(gaussians, cameras, settings.sh_degree)

    def rasterize(self, proj: Projected, features: Tensor, height: int, width: int,
                  settings: RenderSettings) -> tuple[Tensor, Tensor]:
        return rasterize(proj, features, height, width)


BACKEND = ReferenceBackend()
