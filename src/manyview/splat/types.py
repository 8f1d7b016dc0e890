"""What flows between the stages of a render, and the rules every backend follows.

Stages (each backend implements them; a sharded Gaussian store can run ``project`` per shard and concatenate
the :class:`Projected` tensors along P before ``rasterize``, which is where gsplat's and Grendel's
distributed renderers exchange data):

1. project: Gaussians x cameras -> :class:`Projected` (per camera-Gaussian 2D mean, conic, depth, opacity, extent);
2. shade: SH colours for each camera's view direction (plain PyTorch, shared by all backends);
3. rasterize: front-to-back alpha compositing of per-Gaussian features (colour and depth) into pixels.

Semantics (3DGS / gsplat, held by the float64 reference and the fast backends alike):

- EWA projection with the 3DGS Jacobian (view-space x/z and y/z clamped to 1.3x the field of view) and a
  0.3 px^2 low-pass dilation of the 2D covariance. ``mode="antialiased"`` (Mip-Splatting, gsplat's
  ``rasterize_mode="antialiased"``) also scales the opacity by sqrt(det(cov) / det(cov + 0.3 I)).
- Gaussians with depth outside [near, far] are culled, as are those whose opacity is below 1/255.
- A pixel centre (x + 0.5, y + 0.5) receives a Gaussian only inside its extent: the bounding box of its
  k-sigma ellipse, k = min(3, sqrt(2 ln(255 o))). Below 3 sigma this is exactly where alpha can reach 1/255,
  so tiles never change the image; the 3-sigma cap is 3DGS's extent, applied per pixel instead of per tile so
  that the result does not depend on the tile size.
- alpha = min(0.99, o exp(-power)); Gaussians with alpha < 1/255 are skipped; compositing in depth order
  stops before the Gaussian that would take transmittance below 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS2D = 0.3  # low-pass dilation of the 2D covariance, px^2
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
EXTENT_SIGMA = 3.0
FOV_CLAMP = 1.3  # the Jacobian is evaluated at most 30% beyond the image border


@dataclass(frozen=True, eq=False)
class Projected:
    """Per camera-Gaussian screen-space quantities (C cameras, P Gaussians)."""

    means2d: Tensor  # (C, P, 2) pixel coordinates of the centre (COLMAP convention: image spans [0, W])
    conics: Tensor  # (C, P, 3) inverse 2D covariance (a, b, c) of [[a, b], [b, c]], after dilation
    depths: Tensor  # (C, P) camera z
    opacities: Tensor  # (C, P) opacity after the antialiasing compensation
    radii: Tensor  # (C, P, 2) half-extent of the pixel box in x and y; 0 where culled (no gradient)


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """A batch of renders. Images are channel-first like ``manyview.scene.Views.images``."""

    rgb: Tensor  # (C, 3, H, W) colour over the background
    alpha: Tensor  # (C, H, W) accumulated opacity, 1 - final transmittance
    depth: Tensor  # (C, H, W) expected z-depth sum(w z) / sum(w); 0 where alpha is 0
    means2d: Tensor  # (C, P, 2) projected centres; call .retain_grad() to collect densification statistics
    radii: Tensor  # (C, P, 2) pixel half-extents, 0 where the Gaussian was culled for that camera

    def to(self, dtype: torch.dtype) -> RenderOutput:
        """Every tensor in ``dtype`` (self when it already is)."""
        if self.rgb.dtype == dtype:
            return self
        return RenderOutput(*(t.to(dtype) for t in (self.rgb, self.alpha, self.depth, self.means2d, self.radii)))
