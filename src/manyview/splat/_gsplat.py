"""The gsplat backend: ``gsplat.rasterization`` on CUDA, behind manyview's types (optional extra ``gsplat``).

gsplat takes activated parameters, world-to-camera ``viewmats`` and 3x3 ``Ks``; it returns channel-last
images. Its semantics differ from the reference in details (the alpha clamp is 0.999, extents are applied per
tile), so images agree closely but not bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat.gaussians import GaussianStore
from manyview.splat.types import EPS2D, RenderOutput


def render(g: GaussianStore, cameras: Cameras, background: Tensor | None, sh_degree: int, mode: str, near: float,
           far: float, tile_size: int) -> RenderOutput:
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise ManyviewError("the gsplat backend needs the optional dependency: pip install 'manyview[gsplat]'") from e
    if g.means.device.type != "cuda":
        raise ManyviewError("the gsplat backend needs the Gaussians on a CUDA device")
    device = g.means.device
    cams = cameras.to(device=device, dtype=torch.float32)
    height, width = (int(v) for v in cams.image_size[0])
    sh = torch.cat([g.sh_dc, g.sh_rest], dim=1).float()  # (P, K, 3)
    colors, alphas, meta = rasterization(
        means=g.means.float(), quats=g.quats.float(), scales=g.log_scales.float().exp(),
        opacities=torch.sigmoid(g.opacity_logits.float()), colors=sh, viewmats=cams.w2c, Ks=cams.K,
        width=width, height=height, near_plane=near, far_plane=far, eps2d=EPS2D, sh_degree=sh_degree,
        packed=False, tile_size=tile_size, render_mode="RGB+ED", rasterize_mode=mode)
    alpha = alphas[..., 0]  # (C, H, W)
    rgb = colors[..., :3]
    if background is not None:
        rgb = rgb + (1 - alpha)[..., None] * background.to(rgb)
    radii = meta["radii"]
    radii = radii[..., None].expand(*radii.shape, 2) if radii.dim() == 2 else radii  # gsplat < 1.5: one radius
    return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha, depth=colors[..., 3], means2d=meta["means2d"],
                        radii=radii.to(rgb.dtype))
