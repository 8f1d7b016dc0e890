"""Feature rendering: per-point 3D features composited into camera views, differentiably.

The density along each camera ray comes from the geometry: every scene point is an isotropic Gaussian blob of world
radius ``r`` (from the point spacing, :func:`point_radii`) and peak opacity ``o``. Where the ray through a pixel passes
the point, the blob's opacity there is

    alpha = min(o * exp(-((u - u_p)^2 / s_x^2 + (v - v_p)^2 / s_y^2) / 2), max_alpha)
    s_x = f_x r / z_p,  s_y = f_y r / z_p

(the Gaussian's footprint projected at the point's depth z_p, as in EWA / 3D Gaussian splatting for isotropic blobs),
and the blobs are composited front to back in order of depth, which is volume rendering's quadrature with the density
concentrated at the points:

    F(pixel) = sum_i T_i alpha_i f_i,   T_i = prod_{j < i} (1 - alpha_j),   A(pixel) = sum_i T_i alpha_i

``A`` is the accumulated opacity: a constant feature field renders to ``c * A``, i.e. to ``c`` wherever the rays are
opaque, and ``F / A`` (``normalize=True``) renders it to ``c`` wherever anything is hit.

:func:`render_features` is vectorised over all (pixel, point) pairs of a view, in chunks of pixels;
:func:`render_features_reference` is the per-ray, per-point loop in float64 it is tested against (values and
gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.geometry.projection import project
from manyview.geometry.rays import pixel_grid
from manyview.geometry.transforms import invert_rigid


def point_radii(points: Tensor, k: int = 8, scale: float = 1.0, chunk: int = 4096) -> Tensor:
    """(P,) blob radii: ``scale`` times the mean distance of each point to its ``k`` nearest neighbours."""
    P = points.shape[0]
    k = max(1, min(k, P - 1))
    if P < 2:
        return points.new_ones(P)
    out = []
    for i in range(0, P, chunk):
        d = torch.cdist(points[i: i + chunk], points)  # (c, P)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(dim=1))
    return torch.cat(out) * scale


def grid_intrinsics(fxfycxcy: Tensor, image_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Intrinsics (..., 4) of an H x W image rescaled to an h x w grid over the same image (pixel edges kept)."""
    (H, W), (h, w) = image_size, grid
    scale = fxfycxcy.new_tensor([w / W, h / H, w / W, h / H])
    return fxfycxcy * scale


def _blob_alpha(uv_pix: Tensor, uv: Tensor, sigma: Tensor, opacity: Tensor, max_alpha: float) -> Tensor:
    """alpha (M, P) of P blobs (screen centres uv (P, 2), footprints sigma (P, 2), opacity (P,)) at pixels (M, 2)."""
    d = (uv_pix[:, None, :] - uv[None, :, :]) / sigma[None, :, :]
    return (opacity[None, :] * torch.exp(-0.5 * d.square().sum(-1))).clamp(max=max_alpha)


def render_features(points: Tensor, features: Tensor, radii: Tensor, opacity: Tensor, fxfycxcy: Tensor,
                    c2w: Tensor, height: int, width: int, near: float = 1e-3, max_alpha: float = 0.99,
                    normalize: bool = False, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Render per-point features into V views.

    points (P, 3), features (P, C), radii (P,) world units, opacity (P,) in [0, 1]; fxfycxcy (V, 4) for the
    ``height`` x ``width`` output grid (see :func:`grid_intrinsics`), c2w (V, 4, 4).
    Returns features (V, C, height, width) and accumulated opacity (V, height, width). Points nearer than ``near``
    (or behind the camera) are skipped. ``normalize``: divide by the accumulated opacity (0 where nothing is hit).
    """
    V = fxfycxcy.shape[0]
    pix = pixel_grid(height, width, dtype=points.dtype, device=points.device).reshape(-1, 2)
    out_f, out_a = [], []
    for v in range(V):
        uv, z = project(points, fxfycxcy[v], invert_rigid(c2w[v]))
        keep = z > near
        order = torch.argsort(torch.where(keep, z, torch.full_like(z, float("inf"))), stable=True)
        order = order[: int(keep.sum())]
        zs = z[order]
        sigma = radii[order, None] * fxfycxcy[v, None, :2] / zs[:, None]  # (P', 2)
        f_v, a_v = [], []
        for m0 in range(0, pix.shape[0], chunk):
            alpha = _blob_alpha(pix[m0: m0 + chunk], uv[order], sigma, opacity[order], max_alpha)  # (m, P')
            log_t = torch.cumsum(torch.log1p(-alpha), dim=1)
            trans = torch.exp(torch.cat((log_t.new_zeros(alpha.shape[0], 1), log_t[:, :-1]), dim=1))
            weight = trans * alpha
            f_v.append(weight @ features[order])
            a_v.append(weight.sum(dim=1))
        out_f.append(torch.cat(f_v))
        out_a.append(torch.cat(a_v))
    feats = torch.stack(out_f).reshape(V, height, width, -1).permute(0, 3, 1, 2)
    alpha = torch.stack(out_a).reshape(V, height, width)
    if normalize:
        feats = feats / alpha.clamp_min(1e-8)[:, None]
    return feats, alpha


def render_features_reference(points: Tensor, features: Tensor, radii: Tensor, opacity: Tensor, fxfycxcy: Tensor,
                              c2w: Tensor, height: int, width: int, near: float = 1e-3, max_alpha: float = 0.99,
                              normalize: bool = False) -> tuple[Tensor, Tensor]:
    """The same rendering, one ray and one point at a time, in float64 (tiny inputs only)."""
    points, features, radii, opacity = points.double(), features.double(), radii.double(), opacity.double()
    fxfycxcy, c2w = fxfycxcy.double(), c2w.double()
    V, C = fxfycxcy.shape[0], features.shape[1]
    views_f, views_a = [], []
    for v in range(V):
        fx, fy, cx, cy = fxfycxcy[v]
        w2c = torch.linalg.inv(c2w[v])
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        rows_f, rows_a = [], []
        for i in range(height):
            for j in range(width):
                pu, pv = j + 0.5, i + 0.5
                hits = []
                for p in range(points.shape[0]):
                    z = cam[p, 2]
                    if not z > near:
                        continue
                    u, w_ = fx * cam[p, 0] / z + cx, fy * cam[p, 1] / z + cy
                    sx, sy = fx * radii[p] / z, fy * radii[p] / z
                    a = opacity[p] * torch.exp(-0.5 * (((pu - u) / sx) ** 2 + ((pv - w_) / sy) ** 2))
                    hits.append((float(z.detach()), p, torch.clamp(a, max=max_alpha)))
                hits.sort(key=lambda h: (h[0], h[1]))
                trans = torch.ones((), dtype=torch.float64)
                acc = torch.zeros((), dtype=torch.float64)
                f = torch.zeros(C, dtype=torch.float64)
                for _, p, a in hits:
                    f = f + trans * a * features[p]
                    acc = acc + trans * a
                    trans = trans * (1 - a)
                rows_f.append(f)
                rows_a.append(acc)
        views_f.append(torch.stack(rows_f).reshape(height, width, C).permute(2, 0, 1))
        views_a.append(torch.stack(rows_a).reshape(height, width))
    feats, alpha = torch.stack(views_f), torch.stack(views_a)
    if normalize:
        feats = feats / alpha.clamp_min(1e-8)[:, None]
    return feats, alpha


__all__ = ["grid_intrinsics", "point_radii", "render_features", "render_features_reference"]
