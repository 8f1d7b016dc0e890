"""Where a Gaussian splat's scene is (a robust bounding box of its opaque Gaussians), and the orbit that frames it.

A 3DGS PLY carries no cameras; to frame it (``manyview render SCENE.ply --orbit N``) the box must describe what is
seen, not the faint floaters and far stragglers that optimisation leaves behind: Gaussians nearly transparent
are left out, and the box spans the ``quantile`` .. ``1 - quantile`` range of the rest's centres along each axis,
widened by the typical Gaussian's reach (three standard deviations), so that even a single Gaussian has a size.
:func:`splat_orbit` is the one orbit of a splat, with or without the cameras it was made from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.poses import point_bounds
from manyview.scene import Cameras
from manyview.splat.gaussians import Gaussians


# Fewer opaque Gaussians than this say little about where the scene is: bound them all instead.
MIN_OPAQUE = 16


def _opaque(gaussians: Gaussians, min_opacity: float) -> Tensor:
    if len(gaussians) == 0:
        raise ManyviewError("no Gaussians: there is nothing to bound")
    if not 0.0 <= min_opacity < 1.0:
        raise ManyviewError(f"the opacity threshold must be in [0, 1), got {min_opacity}")
    opaque = torch.sigmoid(gaussians.opacity_logits.detach().to("cpu", torch.float64)) > min_opacity
    if int(opaque.sum()) < min(MIN_OPAQUE, len(gaussians)):
        opaque = torch.ones_like(opaque)
    return opaque


def opaque_centers(gaussians: Gaussians, min_opacity: float = 0.5) -> Tensor:
    """(P, 3) float64 centres of the Gaussians whose opacity (``sigmoid(opacity_logit)``) exceeds ``min_opacity``
    (of all Gaussians when fewer than 16 do: a splat only initialised, or faint everywhere, is still somewhere)."""
    return gaussians.means.detach().to("cpu", torch.float64)[_opaque(gaussians, min_opacity)]


def opaque_bounds(gaussians: Gaussians, min_opacity: float = 0.5, quantile: float = 0.02) -> tuple[Tensor, Tensor]:
    """(low (3,), high (3,)) float64: the ``quantile`` and ``1 - quantile`` of the :func:`opaque_centers`,
    widened by three times their median largest standard deviation."""
    opaque = _opaque(gaussians, min_opacity)
    low, high = point_bounds(gaussians.means.detach().to("cpu", torch.float64)[opaque], quantile)
    sigma = gaussians.log_scales.detach().to("cpu", torch.float64)[opaque].amax(-1).exp()
    reach = 3 * sigma.median()
    return low - reach, high + reach


# The orbit of a splat without cameras: a common photographic field of view, at a size that renders quickly.
ORBIT_FOV_X_DEG = 50.0
ORBIT_SIZE = (512, 512)


def splat_orbit(gaussians: Gaussians, n: int, cameras: Cameras | None = None, *, image_size=ORBIT_SIZE,
                up: Tensor | None = None) -> Cameras:
    """``n`` float32 cameras on an orbit that frames the splat.

    With ``cameras`` (those it was made from) it is :meth:`Cameras.orbit` through what they look at, at their
    distance and with their intrinsics, the opaque Gaussians standing in for the scene's points. Without, it
    circles the :func:`opaque_bounds` box 20 degrees above it, keeping all of it in view, with a 50-degree
    horizontal field of view at ``image_size`` (height, width). ``up`` is the world's vertical (default: the
    cameras'; +z without cameras)."""
    if cameras is not None:
        return cameras.orbit(n, up=up, points=opaque_centers(gaussians)).to(torch.float32)
    low, high = opaque_bounds(gaussians)
    return Cameras.orbit_around_box(low, high, n, image_size, ORBIT_FOV_X_DEG, up=up)


__all__ = ["MIN_OPAQUE", "ORBIT_FOV_X_DEG", "ORBIT_SIZE", "opaque_bounds", "opaque_centers", "splat_orbit"]
