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
from manyview.splat.backend import RenderSettings
from manyview.splat.gaussians import GaussianStore
from manyview.splat.types import EPS2D, RenderOutput


class GsplatBackend:
    """One call to ``gsplat.rasterization`` (project, shade and rasterise fused), float32 on CUDA."""

    name = "gsplat"

    def render(self, gaussians: GaussianStore, cameras: Cameras, background: Tensor | None,
               settings: RenderSettings) -> RenderOutput:
        try:
            from gsplat import rasterization
        except ImportError as e:
            raise ManyviewError("the gsplat backend needs the optional dependency: pip install 'manyview[gsplat]'") \
                from e
        if gaussians.means.device.type != "cuda":
            raise ManyviewError("the gsplat backend needs the Gaussians on a CUDA device")
        g = gaussians.to(dtype=torch.float32)
        cams = cameras.to(device=g.means.device, dtype=torch.float32)
        height, width = (int(v) for v in cams.image_size[0])
        sh = torch.cat([g.sh_dc, g.sh_rest], dim=1)  # (P, K, 3)
        colors, alphas, meta = rasterization(
            means=g.means, quats=g.quats, scales=g.log_scales.exp(), opacities=torch.sigmoid(g.opacity_logits),
            colors=sh, viewmats=cams.w2c, Ks=cams.K, width=width, height=height, near_plane=settings.near,
            far_plane=settings.far, eps2d=EPS2D, sh_degree=settings.sh_degree, packed=False,
            tile_size=settings.tile_size, render_mode="RGB+ED", rasterize_mode=settings.mode)
        alpha = alphas[..., 0]  # (C, H, W)
        rgb = colors[..., :3]
        if background is not None:
            rgb = rgb + (1 - alpha)[..., None] * background[:, None, None, :].to(rgb)
        radii = meta["radii"]
        radii = radii[..., None].expand(*radii.shape, 2) if radii.dim() == 2 else radii  # gsplat < 1.5: one radius
        return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha, depth=colors[..., 3],
                            means2d=meta["means2d"], radii=radii.to(rgb.dtype))


BACKEND = GsplatBackend()
