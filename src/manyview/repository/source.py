"""A scene to index, read from what the user names: a reconstruction or posed dataset folder (manyview, COLMAP,
transforms.json), or a PLY of points or 3D Gaussians with the cameras in a transforms.json beside it.

The points come from the scene's point cloud (points.ply, COLMAP points3D), a splat's Gaussian centres, or, for a
dataset with depth maps and no points, the depth maps fused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Views

MAX_POINTS = 200_000


@dataclass
class SceneSource:
    views: Views  # with cameras
    points: Tensor  # (P, 3) world


def default_name(path: Path) -> str:
    """The name a scene gets when none is given: its folder's name (a PLY or transforms.json: the folder it is in)."""
    path = Path(path).resolve()
    return path.parent.name if path.is_file() else path.name


def _ply_points(path: Path) -> Tensor:
    from plyfile import PlyData

    from manyview.io.ply import read_ply

    try:
        names = {p.name for p in PlyData.read(str(path))["vertex"].properties}
    except Exception as e:  # plyfile raises several types for malformed files
        raise ManyviewError(f"not a readable PLY file ({e})", path) from None
    if "f_dc_0" in names:
        from manyview.splat import read_ply as read_splat

        return read_splat(path).means.float()
    return read_ply(path).xyz.float()


def load_scene_source(path: str | Path) -> SceneSource:
    """The posed views and points of the scene at ``path`` (errors name the path and what to run instead)."""
    from manyview.io.dataset import detect_format, load_dataset, load_points

    scene = Path(path)
    if not scene.exists():
        raise ManyviewError("no such file or folder", scene)
    if scene.suffix.lower() == ".ply" and scene.is_file():
        points = _ply_points(scene)
        source = scene.parent / "transforms.json"
        if not source.exists():
            raise ManyviewError(f"no cameras for these points: expected {source.name} beside the PLY", scene)
    else:
        source = scene
        if detect_format(scene) == "images":
            raise ManyviewError("these images have no cameras: run `manyview reconstruct` on them first, then index "
                                "its output", scene)
        cloud = load_points(scene)
        points = None if cloud is None or len(cloud) == 0 else cloud.xyz.float()
    try:
        views = load_dataset(source)
    except ValueError as e:  # a camera whose image size is not its image's
        raise ManyviewError(f"images and cameras disagree: {e}", source) from None
    if views.cameras is None:
        raise ManyviewError("no cameras here: run `manyview reconstruct` on the images first", source)
    if points is None and views.depths is not None:
        points = views.point_cloud(max_points=MAX_POINTS).xyz.float()
    if points is None or len(points) == 0:
        raise ManyviewError("this scene has no points (no points.ply / points3D / depth maps): run `manyview "
                            "reconstruct` to make them", scene)
    if not torch.isfinite(points).all():
        raise ManyviewError("some points are not finite", scene)
    return SceneSource(views, points)


__all__ = ["SceneSource", "default_name", "load_scene_source"]
