"""The one interface every render backend implements, and the pieces the staged backends share.

A backend is an object with a ``name`` and ``render(gaussians, cameras, background, settings) -> RenderOutput``
(:class:`Backend`). :func:`manyview.splat.render` checks the arguments, puts them in the form below, picks a
backend from its registry and calls it; it never looks inside a backend. What a backend receives:

- ``gaussians``: any :class:`~manyview.splat.gaussians.GaussianStore`, on any device and dtype; the backend
  asks the store for the dtype it computes in (``store.to(dtype=...)``), so a sharded store converts its own
  shards and is never rebuilt as a :class:`~manyview.splat.gaussians.Gaussians`;
- ``cameras``: a flat batch (C,) sharing one image size;
- ``background``: None (black) or (C, 3) on the Gaussians' device;
- ``settings``: :class:`RenderSettings`, already valid for the store.

Backends written as the stages of :mod:`manyview.splat.types` (project, shade, rasterize) derive from
:class:`StagedBackend`, which composes the stages and the compositing once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat.gaussians import GaussianStore
from manyview.splat.sh import eval_sh
from manyview.splat.types import Projected, RenderOutput

MODES = ("classic", "antialiased")


@dataclass(frozen=True)
class RenderSettings:
    """How to render, beyond what and from where. ``sh_degree`` must not exceed the store's degree."""

    sh_degree: int
    mode: str = "classic"  # or "antialiased" (Mip-Splatting's opacity compensation)
    near: float = 0.01
    far: float = 1e10
    tile_size: int = 16

    def __post_init__(self):
        if self.mode not in MODES:
            raise ManyviewError(f"unknown render mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.sh_degree < 0:
            raise ManyviewError(f"sh_degree must be >= 0, got {self.sh_degree}")
        if self.tile_size < 1:
            raise ManyviewError(f"tile_size must be positive, got {self.tile_size}")
        if not 0 < self.near < self.far:
            raise ManyviewError(f"need 0 < near < far, got near={self.near}, far={self.far}")


@runtime_checkable
class Backend(Protocol):
    """A renderer behind :func:`manyview.splat.render` (see the module docstring for what it receives)."""

    name: str

    def render(self, gaussians: GaussianStore, cameras: Cameras, background: Tensor | None,
               settings: RenderSettings) -> RenderOutput: ...


# ------------------------------------------------------------------------------------- shared by the stages
def shade(gaussians: GaussianStore, cameras: Cameras, sh_degree: int) -> Tensor:
    """(C, P, 3) colours of every Gaussian seen from every camera centre (plain PyTorch, autograd)."""
    sh = torch.cat([gaussians.sh_dc, gaussians.sh_rest], dim=1)  # (P, K, 3)
    dirs = gaussians.means[None] - cameras.centers.to(gaussians.means)[:, None]  # (C, P, 3)
    return eval_sh(sh[None], dirs, sh_degree)


def composite(accum: Tensor, alpha: Tensor, proj: Projected, background: Tensor | None) -> RenderOutput:
    """Accumulated features (C, H, W, 3 + 1) with depth last, alpha (C, H, W), background None or (C, 3) ->
    :class:`RenderOutput`: colour over the background, depth normalised by alpha."""
    rgb = accum[..., :3]
    if background is not None:
        rgb = rgb + (1 - alpha)[..., None] * background[:, None, None, :].to(rgb)
    depth = accum[..., 3] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha, depth=depth, means2d=proj.means2d,
                        radii=proj.radii)


class StagedBackend(ABC):
    """A backend written as the three stages of :mod:`manyview.splat.types`, computing in ``compute_dtype``.

    ``render`` converts the store and cameras, projects, shades, rasterises colour and depth together, and
    composites; subclasses supply the stages (and may check the store first in ``check``).
    """

    name: str
    compute_dtype: torch.dtype

    def check(self, gaussians: GaussianStore) -> None:
        """Raise ManyviewError when this backend cannot render ``gaussians`` where they are."""

    def output_dtype(self, gaussians: GaussianStore) -> torch.dtype:
        return self.compute_dtype

    @abstractmethod
    def project(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings) -> Projected:
        """Gaussians (P) x cameras (C,) -> :class:`Projected`."""

    @abstractmethod
    def shade(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings, proj: Projected) -> Tensor:
        """(C, P, 3) colours seen from each camera."""

    @abstractmethod
    def rasterize(self, proj: Projected, features: Tensor, height: int, width: int,
                  settings: RenderSettings) -> tuple[Tensor, Tensor]:
        """Features (C, P, D) -> accumulated (C, H, W, D) and alpha (C, H, W)."""

    def render(self, gaussians: GaussianStore, cameras: Cameras, background: Tensor | None,
               settings: RenderSettings) -> RenderOutput:
        self.check(gaussians)
        out_dtype = self.output_dtype(gaussians)
        g = gaussians.to(dtype=self.compute_dtype)
        cams = cameras.to(self.compute_dtype)
        height, width = (int(v) for v in cams.image_size[0])
        proj = self.project(g, cams, settings)
        # the 2D means returned lie on the path to the image, so that their .grad (densification's statistic) fills
        # also when the stages compute in another dtype than they return (the reference: float64)
        means2d = proj.means2d.to(out_dtype)
        if means2d is not proj.means2d:
            proj = replace(proj, means2d=means2d.to(self.compute_dtype))
        colors = self.shade(g, cams, settings, proj)
        features = torch.cat([colors, proj.depths[..., None]], dim=-1)  # (C, P, 4)
        accum, alpha = self.rasterize(proj, features, height, width, settings)
        return replace(composite(accum, alpha, proj, background).to(out_dtype), means2d=means2d)
