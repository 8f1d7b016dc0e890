"""Shared scenes for the splatting tests: small, random, and built to exercise the awkward cases. Imported by
name (``from splat_scenes import make_scene``): this folder is on sys.path, as for ``splat_spawn``."""

from __future__ import annotations

import math

import torch

from manyview.scene import Cameras
from manyview.splat import Gaussians


def make_scene(n: int = 48, seed: int = 0, degree: int = 2, dtype=torch.float64) -> Gaussians:
    """Random Gaussians around the origin, including the cases a rasteriser gets wrong: a huge one covering
    the whole image, sub-pixel ones, one behind the cameras, some beside the image border, some opaque."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    n_all, n = max(n, 14), n  # the special cases need 14; smaller scenes are a prefix
    means = (r(n_all, 3) - 0.5) * torch.tensor([3.0, 2.0, 3.0], dtype=torch.float64)
    log_scales = torch.log(0.04 + 0.3 * r(n_all, 3))
    log_scales[0] = math.log(2.5)  # huge: covers every image
    log_scales[1:4] = math.log(0.002)  # sub-pixel
    means[4] = torch.tensor([0.3, -0.2, -9.0], dtype=torch.float64)  # behind every camera
    means[5:8, 0] = torch.tensor([2.2, -2.3, 2.0], dtype=torch.float64)  # beyond the left / right borders
    quats = torch.randn(n_all, 4, generator=gen, dtype=torch.float64)
    logits = torch.randn(n_all, generator=gen, dtype=torch.float64) * 2.0
    # a cluster of large, nearly opaque Gaussians in front: pixels behind them terminate early, some alphas clamp
    means[8:14] = (r(6, 3) - 0.5) * 0.8
    log_scales[8:14] = math.log(0.35)
    logits[8:14] = torch.tensor([6.0, 4.0, 5.0, 3.5, 6.0, 4.5], dtype=torch.float64)
    k = (degree + 1) ** 2
    dc = torch.randn(n_all, 1, 3, generator=gen, dtype=torch.float64) * 0.6
    rest = torch.randn(n_all, k - 1, 3, generator=gen, dtype=torch.float64) * 0.25
    return Gaussians(means, log_scales, quats, logits, dc, rest).select(torch.arange(n)).to(dtype)


def make_cameras(n: int = 3, height: int = 37, width: int = 53, dtype=torch.float64) -> Cameras:
    eyes = torch.tensor([[0.0, 0.0, -4.0], [1.5, 0.5, -3.5], [-2.0, -0.3, -3.0], [0.5, -1.5, -3.8]],
                        dtype=torch.float64)[:n]
    f = 0.9 * width
    intr = torch.tensor([f, f * 1.02, width * 0.52, height * 0.47], dtype=torch.float64)
    cams = Cameras.look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64),
                           intr, (height, width))
    return cams.to(dtype)


def pair_statistics(g: Gaussians, cams: Cameras, mode: str = "classic") -> dict[str, float]:
    """What a scene exercises, from the reference's own quantities: the smallest relative distance of any
    pixel-Gaussian pair to each threshold (alpha 1/255, the 0.99 clamp, the extent box, T = 1e-4), the number
    of terminated pixels and clamped pairs, and of visible pairs whose Jacobian is clamped to 1.3x the FOV."""
    from manyview.splat import _reference
    from manyview.splat.types import ALPHA_MAX, ALPHA_MIN, T_MIN

    g = g.to(torch.float64)
    cams = cams.to(torch.float64)
    proj = _reference.project(g, cams, mode)
    h, w = (int(v) for v in cams.image_size[0])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    out = {"alpha_min": math.inf, "alpha_max": math.inf, "box": math.inf, "t_min": math.inf,
           "terminated": 0, "clamped": 0}
    w2c = cams.w2c
    cam_pts = torch.einsum("cij,pj->cpi", w2c[:, :3, :3], g.means) + w2c[:, None, :3, 3]
    fx, fy, cx, cy = (v[:, None] for v in cams.fxfycxcy.unbind(-1))
    ux, uy = cam_pts[..., 0] / cam_pts[..., 2], cam_pts[..., 1] / cam_pts[..., 2]
    mx, my = 0.15 * w / fx, 0.15 * h / fy
    fov = (ux > (w - cx) / fx + mx) | (ux < -cx / fx - mx) | (uy > (h - cy) / fy + my) | (uy < -cy / fy - my)
    out["fov_clamped"] = int((fov & (proj.radii > 0).all(-1)).sum())
    for c in range(len(cams)):
        order = torch.argsort(proj.depths[c])
        m2d, con, opa, rad = (t[c, order].detach() for t in (proj.means2d, proj.conics, proj.opacities, proj.radii))
        d = pix - m2d
        dx, dy = d[..., 0], d[..., 1]
        power = 0.5 * (con[:, 0] * dx**2 + con[:, 2] * dy**2) + con[:, 1] * dx * dy
        raw = opa * torch.exp(-power)
        vis = (rad > 0).all(-1)
        inbox = vis & (dx.abs() <= rad[:, 0]) & (dy.abs() <= rad[:, 1])
        near_box = vis & (dx.abs() <= rad[:, 0] + 1) & (dy.abs() <= rad[:, 1] + 1) & (raw > ALPHA_MIN / 2)
        box_gap = torch.minimum((dx.abs() - rad[:, 0]).abs(), (dy.abs() - rad[:, 1]).abs())
        if near_box.any():
            out["box"] = min(out["box"], box_gap[near_box].min().item())
        if inbox.any():
            out["alpha_min"] = min(out["alpha_min"], ((raw[inbox] - ALPHA_MIN).abs() / ALPHA_MIN).min().item())
            out["alpha_max"] = min(out["alpha_max"], (raw[inbox] - ALPHA_MAX).abs().min().item())
        alpha = torch.where(inbox & (raw >= ALPHA_MIN), raw.clamp(max=ALPHA_MAX), torch.zeros_like(raw))
        t_after = torch.cumprod(1 - alpha, dim=1)
        if (alpha > 0).any():
            out["t_min"] = min(out["t_min"], ((t_after[alpha > 0] - T_MIN).abs() / T_MIN).min().item())
        out["terminated"] += int((t_after[:, -1] < T_MIN).sum())
        out["clamped"] += int((inbox & (raw > ALPHA_MAX)).sum())
    return out


def training_scene():
    """(views, points) of the synthetic object scene the trainer tests train on: 8 views of 32 x 32, the points
    of every pixel (exact depth)."""
    from manyview.scene import Views
    from manyview.synth import generate

    _, views = generate(0, kind="object", num_views=8, height=32, width=32)
    return Views(images=views.images, cameras=views.cameras, names=views.names), views.point_cloud(max_points=None)
