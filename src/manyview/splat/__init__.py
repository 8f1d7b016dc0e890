"""Gaussian splatting: Gaussians, the 3DGS PLY format, initialisation from points, one ``render()``, and
3DGS densification."""

from manyview.splat.gaussians import Gaussians, GaussianStore
from manyview.splat.init import from_points, random_in_box
from manyview.splat.ply import read_ply, write_ply
from manyview.splat.render import render
from manyview.splat.strategy import DensifyStrategy
from manyview.splat.types import Projected, RenderOutput

__all__ = ["DensifyStrategy", "GaussianStore", "Gaussians", "Projected", "RenderOutput", "from_points",
           "random_in_box", "read_ply", "render", "write_ply"]
