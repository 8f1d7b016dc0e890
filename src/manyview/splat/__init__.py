"""Gaussian splatting: Gaussians, the 3DGS PLY format, initialisation from points, one ``render()`` over
registered backends of one interface, and 3DGS densification. ``ShardedGaussians`` (Gaussians sharded across
processes as DTensors) loads ``manyview.splat.sharded`` on first use: torch.distributed.tensor takes a second to
import."""

from manyview.splat.backend import Backend, RenderSettings
from manyview.splat.gaussians import Gaussians, GaussianStore
from manyview.splat.init import from_points, random_in_box
from manyview.splat.ply import read_ply, write_ply
from manyview.splat.render import register_backend, render
from manyview.splat.strategy import DensifyStrategy
from manyview.splat.types import Projected, RenderOutput

__all__ = ["Backend", "DensifyStrategy", "GaussianStore", "Gaussians", "Projected", "RenderOutput", "RenderSettings",
           "from_points", "random_in_box", "read_ply", "register_backend", "render", "write_ply"]


def __getattr__(name: str):
    if name in ("ShardedGaussians", "gaussian_mesh"):
        from manyview.splat import sharded

        return getattr(sharded, name)
    raise AttributeError(f"module 'manyview.splat' has no attribute {name!r}")
