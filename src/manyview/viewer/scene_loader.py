"""What the viewer shows for a path: cameras with thumbnails, a point cloud, Gaussians.

Accepts every folder manyview writes or reads (a reconstruction or ``synth`` dataset with ``sparse/0`` /
``transforms.json`` / ``points.ply``, a COLMAP dataset, a ``splat`` run with ``splat.ply`` + ``transforms.json``),
a transforms.json file, and single PLY files (a 3DGS PLY or a point cloud). Cameras are read from their metadata
and the images only decoded as small thumbnails, so a large photo set opens quickly.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from manyview.errors import ManyviewError

if TYPE_CHECKING:  # torch and the scene types are imported when a scene is read, not with the viewer
    from manyview.scene import Cameras, PointCloud
    from manyview.splat import Gaussians

SPLAT_NAME = "splat.ply"  # what ``manyview splat`` writes
POINTS_NAME = "points.ply"  # what ``manyview reconstruct`` and ``manyview synth`` write
_TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
_SPLAT_PROPERTIES = {"f_dc_0", "opacity", "scale_0", "rot_0"}  # present in every 3DGS PLY, absent in point clouds


@dataclass(frozen=True, eq=False)
class ViewerScene:
    """Everything the viewer draws; any part may be missing, but not all of them."""

    source: Path
    cameras: Cameras | None = None  # (N,) camera-to-world, OpenCV axes
    names: list[str] = field(default_factory=list)
    thumbnails: list[np.ndarray | None] = field(default_factory=list)  # (h, w, 3) uint8 per camera, None if missing
    points: PointCloud | None = None
    gaussians: Gaussians | None = None
    found: list[str] = field(default_factory=list)  # what was read, for the viewer's info panel

    @property
    def num_cameras(self) -> int:
        return 0 if self.cameras is None else len(self.cameras)


def ply_properties(path: Path) -> set[str]:
    """The property names of a PLY's ``vertex`` element, from its header alone."""
    names: set[str] = set()
    element = None
    try:
        with open(path, "rb") as fh:
            if fh.readline().strip() != b"ply":
                raise ManyviewError("not a PLY file (no 'ply' magic line)", path)
            for _ in range(10_000):
                line = fh.readline()
                if not line:
                    break
                words = line.split()
                if not words:
                    continue
                if words[0] == b"end_header":
                    return names
                if words[0] == b"element":
                    element = words[1] if len(words) > 1 else None
                elif words[0] == b"property" and element == b"vertex":
                    names.add(words[-1].decode("ascii", "replace"))
    except OSError as e:
        raise ManyviewError(f"cannot read PLY: {e}", path) from None
    raise ManyviewError("PLY header has no end_header line", path)


def is_splat_ply(path: Path) -> bool:
    return _SPLAT_PROPERTIES <= ply_properties(path)


def check_viewable(path: str | os.PathLike) -> Path:
    """The error :func:`load_scene` gives for a path that plainly holds nothing viewable (missing, a file that is
    neither PLY nor JSON, a folder without any of the files it reads), from names alone: nothing is read and
    nothing heavy imported, so that ``manyview view`` can refuse before it serves a page. A path that passes may
    still fail in :func:`load_scene` (a corrupt file)."""
    p = Path(path)
    if not p.exists():
        raise ManyviewError("no such file or folder", p)
    if p.is_file():
        if p.suffix.lower() not in (".ply", ".json"):
            raise _not_viewable_file(p)
        return p
    candidates = [p / SPLAT_NAME, p / POINTS_NAME] + [p / n for n in _TRANSFORMS_NAMES]
    if any(c.is_file() for c in candidates) or (p / "sparse").is_dir() or (p / "colmap").is_dir() or any(
            (p / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
        return p
    raise _nothing_in_folder(p)


def _not_viewable_file(p: Path) -> ManyviewError:
    return ManyviewError("nothing to view: expected a folder, a transforms.json, or a .ply (3DGS splat or point "
                         "cloud)", p)


def _nothing_in_folder(p: Path) -> ManyviewError:
    if _any_images(p) or _any_images(p / "images"):
        return ManyviewError("nothing to view: an image folder without camera poses; estimate them first with "
                             "`manyview reconstruct` and view its output", p)
    return ManyviewError(f"nothing to view: no cameras (COLMAP sparse/0, transforms.json), point cloud "
                         f"({POINTS_NAME}) or Gaussian splat ({SPLAT_NAME}) here", p)


def load_scene(path: str | os.PathLike, thumbnail_size: int = 256, max_points: int = 1_000_000) -> ViewerScene:
    """Read what there is to view at ``path``; a ``ManyviewError`` when it holds nothing viewable."""
    p = Path(path)
    if not p.exists():
        raise ManyviewError("no such file or folder", p)
    if p.is_file():
        return _load_file(p, thumbnail_size, max_points)
    return _load_folder(p, thumbnail_size, max_points)


def _load_file(p: Path, thumbnail_size: int, max_points: int) -> ViewerScene:
    suffix = p.suffix.lower()
    if suffix == ".ply":
        if is_splat_ply(p):
            return ViewerScene(p, gaussians=_read_gaussians(p), found=[f"Gaussian splat {p.name}"])
        points = _read_points(p, max_points)
        return ViewerScene(p, points=points, found=[f"point cloud {p.name}"])
    if suffix == ".json":
        cameras, names, images = _transforms_cameras(p)
        thumbs = _thumbnails(images, thumbnail_size, cameras.image_size.tolist())
        return ViewerScene(p, cameras, names, thumbs, found=[f"cameras {p.name}"])
    raise _not_viewable_file(p)


def _load_folder(p: Path, thumbnail_size: int, max_points: int) -> ViewerScene:
    from manyview.io.colmap import find_colmap_model, read_colmap

    found: list[str] = []
    gaussians = points = cameras = None
    names: list[str] = []
    images: list[Path] = []
    if (p / SPLAT_NAME).is_file():
        gaussians = _read_gaussians(p / SPLAT_NAME)
        found.append(f"Gaussian splat {SPLAT_NAME}")
    if (p / POINTS_NAME).is_file():
        points = _read_points(p / POINTS_NAME, max_points)
        found.append(f"point cloud {POINTS_NAME}")
    model_dir = find_colmap_model(p)
    transforms = next((p / n for n in _TRANSFORMS_NAMES if (p / n).is_file()), None)
    if model_dir is not None:
        with warnings.catch_warnings():  # dropped lens distortion does not matter for drawing frusta
            warnings.simplefilter("ignore")
            model = read_colmap(model_dir)
        cameras, names = model.cameras, model.names
        folder = next((f for f in (p / "images", model_dir.parent.parent / "images", p) if f.is_dir()), p)
        images = [folder / n for n in names]
        found.append(f"cameras {model_dir.relative_to(p).as_posix() or '.'} (COLMAP)")
        if points is None and model.points is not None and len(model.points):
            points = model.points.subsample(max_points)
            found.append(f"point cloud {model_dir.relative_to(p).as_posix()}/points3D (COLMAP)")
    elif transforms is not None:
        cameras, names, images = _transforms_cameras(transforms)
        found.append(f"cameras {transforms.name}")
    if cameras is None and gaussians is None and points is None:
        raise _nothing_in_folder(p)
    thumbs = _thumbnails(images, thumbnail_size, cameras.image_size.tolist()) if cameras is not None else []
    return ViewerScene(p, cameras, names, thumbs, points, gaussians, found)


def _any_images(folder: Path) -> bool:
    from manyview.io.images import is_image_file

    return folder.is_dir() and any(c.is_file() and is_image_file(c) for c in folder.iterdir())


def _read_gaussians(path: Path) -> Gaussians:
    from manyview.splat import read_ply

    g = read_ply(path)
    if len(g) == 0:
        raise ManyviewError("the Gaussian splat has no Gaussians", path)
    return g


def _read_points(path: Path, max_points: int) -> PointCloud:
    from manyview.io.ply import read_ply

    cloud = read_ply(path)
    if len(cloud) == 0:
        raise ManyviewError("the point cloud has no points", path)
    return cloud.subsample(max_points)  # a browser draws a few million points at most


def _transforms_cameras(path: Path) -> tuple[Cameras, list[str], list[Path]]:
    import torch

    from manyview.io.transforms_json import parse_transforms_json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = parse_transforms_json(path)
    return meta.cameras.to(torch.float32), meta.names, list(meta.image_paths)


def _thumbnails(paths: list[Path], size: int, sizes: list[list[int]] | None = None) -> list[np.ndarray | None]:
    """Small uint8 copies of the images (long side ``size``, never enlarged beyond the camera's ``sizes`` (H, W)),
    stored orientation (the cameras describe the stored pixels); None for an image that is missing or unreadable
    (a splat run's transforms.json names the dataset's images)."""
    import torch

    from manyview.io.images import ImageLoadPolicy, read_image

    out: list[np.ndarray | None] = []
    for i, path in enumerate(paths):
        if not path.is_file():
            out.append(None)
            continue
        long_side = min(size, max(sizes[i])) if sizes is not None else size
        policy = ImageLoadPolicy(long_side=long_side, crop="none", exif_orientation=False, resample="bilinear")
        try:
            image, _ = read_image(path, policy)
        except ManyviewError:
            out.append(None)
            continue
        out.append((image.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    return out
