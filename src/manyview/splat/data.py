"""What a splat is trained on: the posed views of a dataset folder, at a working width, and its points."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from manyview.errors import ManyviewError, require
from manyview.scene import PointCloud, Views
from manyview.scene.resize import resize_views

POSED_FORMATS = ("manyview", "colmap", "transforms_json")


def load_training_views(path: str | os.PathLike, max_width: int = 480) -> tuple[Views, PointCloud | None]:
    """(Views with float32 cameras, PointCloud or None) of a posed dataset: a COLMAP model with images, a
    transforms.json dataset, a manyview dataset or reconstruction folder.

    Images wider than ``max_width`` are scaled down to it, aspect ratio kept (bilinear with antialiasing, the
    cameras follow); 0 keeps the full size. The points are the dataset's (manyview points.ply or COLMAP
    points3D), None when it has none.
    """
    from manyview.io.dataset import detect_format, load_dataset, load_points

    require(max_width >= 0, "max_width", "at least 0 (0 keeps the full size)", max_width)
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "images":
        raise ManyviewError("this is an image folder without camera poses; estimate them first with `manyview "
                            "reconstruct` (or manyview.recon.sfm.run_colmap_sfm) and train on its output", path)
    if fmt not in POSED_FORMATS:
        raise ManyviewError(f"splat training needs a posed dataset (COLMAP, transforms.json or manyview), got {fmt}",
                            path)
    views = load_dataset(path)
    if views.cameras is None:
        raise ManyviewError("this dataset has no camera poses; estimate them first with `manyview reconstruct`", path)
    h, w = views.height, views.width
    if max_width and w > max_width:
        views = resize_views(views, max(1, round(h * max_width / w)), max_width, crop="none")
    points = load_points(path) if fmt in ("manyview", "colmap") else None
    if points is not None and len(points.xyz) == 0:
        points = None
    return Views(images=views.images, cameras=views.cameras.to(torch.float32), names=views.names), points


__all__ = ["load_training_views"]
