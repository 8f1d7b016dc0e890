"""One entry point for scene folders: detect the format, load ``Views`` (or only their cameras), describe, and
write manyview's layout.

``write_dataset`` writes the layout ``manyview synth`` produces, readable by COLMAP, nerfstudio and manyview::

    manyview.json          format marker: names, image size, what else is present
    images/<stem>.png      8-bit RGB (lossless)
    depth/<stem>.npy       float32 z-depth in scene units, 0 = unknown            (when views have depth)
    masks/<stem>.png       8-bit, 255 = valid                                     (when views have masks)
    normals/<stem>.npy     float32 (3, H, W) world-space normals                  (when views have normals)
    sparse/0/*.bin         COLMAP binary model (PINHOLE cameras, points)         (when views have cameras)
    transforms.json        nerfstudio cameras (depth_unit_scale_factor 1.0)       (when views have cameras)
    points.ply             the point cloud                                        (when points are given)

The whole folder is built under a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory, atomic_open
from manyview.io.colmap import find_colmap_model, read_colmap, read_colmap_dataset, write_colmap
from manyview.io.image_decode import open_image
from manyview.io.image_writers import write_image
from manyview.io.images import ImageLoadPolicy, is_image_file, list_images, load_image_files, load_images
from manyview.io.pixel_maps import read_depth, read_mask, write_depth, write_mask
from manyview.io.ply import read_ply, write_ply
from manyview.io.transforms_json import parse_transforms_json, read_transforms_json, write_transforms_json
from manyview.scene import Cameras, PointCloud, Views, apply_to_cameras

MARKER = "manyview.json"
FORMAT_NAME = "manyview-dataset"
FORMAT_VERSION = 1
_TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")


def detect_format(path: str | os.PathLike) -> str:
    """One of ``manyview``, ``colmap``, ``transforms_json``, ``images``, ``re10k``, ``ply``."""
    p = Path(path)
    if not p.exists():
        raise ManyviewError("no such file or folder", p)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return "transforms_json"
        if suffix == ".ply":
            return "ply"
        if suffix == ".torch":
            return "re10k"
        if is_image_file(p):
            return "images"
        raise ManyviewError(f"unknown file type {p.suffix!r}: expected a folder, transforms.json, an image, "
                            ".ply or .torch", p)
    if (p / MARKER).is_file():
        return "manyview"
    if find_colmap_model(p) is not None:
        return "colmap"
    if any((p / n).is_file() for n in _TRANSFORMS_NAMES):
        return "transforms_json"
    if _has_images(p) or _has_images(p / "images"):
        return "images"
    if (p / "index.json").is_file() and any(p.glob("*.torch")):
        return "re10k"
    raise ManyviewError("no images, COLMAP model (sparse/0), transforms.json or manyview dataset found here", p)


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(c.is_file() and is_image_file(c) for c in folder.iterdir())


def _transforms_file(p: Path) -> Path:
    return p if p.is_file() else next(p / n for n in _TRANSFORMS_NAMES if (p / n).is_file())


def read_cameras(path: str | os.PathLike) -> tuple[Cameras, list[str]]:
    """Cameras (N,) in float64 at their images' file sizes, and their image names, without decoding any image:
    from a COLMAP model folder, a transforms.json, or a dataset folder holding either (:func:`detect_format`)."""
    p = Path(path)
    if not p.exists():
        raise ManyviewError("camera file or folder not found", p)
    if p.is_file() and p.suffix.lower() != ".json":
        raise ManyviewError("expected a transforms.json, a COLMAP model folder or a dataset folder", p)
    fmt = detect_format(p)
    model_dir = find_colmap_model(p) if fmt in ("manyview", "colmap") else None
    if model_dir is not None:
        model = read_colmap(model_dir, dtype=torch.float64)
        return model.cameras, model.names
    if fmt == "transforms_json":
        tj = parse_transforms_json(_transforms_file(p))
        return tj.cameras.to(torch.float64), tj.names
    raise ManyviewError("no cameras here: expected a COLMAP model (sparse/0), a transforms.json or a manyview dataset",
                        p)


def load_dataset(path: str | os.PathLike, policy: ImageLoadPolicy | None = None) -> Views:
    """Load a scene folder (or transforms.json / image file) in any supported format as ``Views``.

    Cameras, when the format has them, are moved onto the loaded images (``policy`` resize and crop).
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "manyview":
        return _load_manyview(p, policy)
    if fmt == "colmap":
        return read_colmap_dataset(p, policy)[0]
    if fmt == "transforms_json":
        return read_transforms_json(_transforms_file(p), policy)
    if fmt == "images":
        folder = p if p.is_file() or _has_images(p) else p / "images"
        return load_images(folder, policy)[0]
    if fmt == "re10k":
        raise ManyviewError("a RealEstate10K chunk holds many scenes; load them with "
                            "manyview.io.realestate10k.iter_scenes / load_scene", p)
    raise ManyviewError("a .ply file holds points, not views; use manyview.io.ply.read_ply", p)


def load_points(path: str | os.PathLike) -> PointCloud | None:
    """The point cloud of a scene folder (manyview points.ply, or COLMAP points3D), None when it has none."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "ply":
        return read_ply(p)
    if fmt == "manyview" and (p / "points.ply").is_file():
        return read_ply(p / "points.ply")
    if fmt in ("manyview", "colmap"):
        model_dir = find_colmap_model(p)
        return None if model_dir is None else read_colmap(model_dir).points
    return None


def _read_marker(root: Path) -> dict:
    path = root / MARKER
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManyviewError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ManyviewError(f"not a {FORMAT_NAME} marker file", path)
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ManyviewError(f"dataset version {meta.get('version')} is newer than this manyview reads "
                            f"({FORMAT_VERSION})", path)
    for key in ("names", "files"):
        if not isinstance(meta.get(key), list) or not meta[key]:
            raise ManyviewError(f"missing key {key!r} (a non-empty list)", path)
    if len(meta["names"]) != len(meta["files"]):
        raise ManyviewError("'names' and 'files' differ in length", path)
    return meta


def _load_manyview(root: Path, policy: ImageLoadPolicy | None) -> Views:
    meta = _read_marker(root)
    files = [str(f) for f in meta["files"]]
    policy = replace(policy or ImageLoadPolicy(), exif_orientation=False)
    views, transforms = load_image_files([root / "images" / f"{f}.png" for f in files], policy, names=meta["names"])
    cameras = None
    if meta.get("has_cameras"):
        model = read_colmap(root / "sparse" / "0")
        order = {name: i for i, name in enumerate(model.names)}
        missing = [f for f in files if f"{f}.png" not in order]
        if missing:
            raise ManyviewError(f"image {missing[0]}.png has no camera in the COLMAP model", root / "sparse" / "0")
        cameras = apply_to_cameras(model.cameras[[order[f"{f}.png"] for f in files]], transforms)

    def maps(folder, suffix, reader):
        if not meta.get(f"has_{folder}"):
            return None
        return torch.stack([t.apply_map(reader(root / folder / f"{f}{suffix}")) for f, t in zip(files, transforms)])

    depths = maps("depth", ".npy", lambda q: read_depth(q, units_per_metre=1.0))
    masks = maps("masks", ".png", read_mask)
    normals = maps("normals", ".npy", _read_normals)
    return replace(views, cameras=cameras, depths=depths, masks=masks, normals=normals)


def _read_normals(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise ManyviewError("normals file not found", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ManyviewError(f"cannot read normals: {e}", path) from None
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ManyviewError(f"normals must be (3, H, W), got {arr.shape}", path)
    return torch.from_numpy(arr.astype(np.float32))


def _file_stems(names: list[str]) -> list[str]:
    """File-system-safe, unique stems for view names (index-based when the names do not give unique ones)."""
    stems = [re.sub(r"[^\w.\-]+", "_", Path(n).with_suffix("").as_posix().replace("/", "_")).strip("._") for n in names]
    if all(stems) and len(set(s.lower() for s in stems)) == len(stems):
        return stems
    return [f"{i:05d}" for i in range(len(names))]


def write_dataset(directory: str | os.PathLike, views: Views, points: PointCloud | None = None) -> Path:
    """Write ``views`` (and ``points``) in manyview's dataset layout, replacing ``directory`` atomically.

    An existing folder is only replaced when it is empty or a manyview dataset itself.
    """
    directory = Path(directory)
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise ManyviewError("refusing to replace a non-empty folder that is not a manyview dataset", directory)
    names = list(views.names)
    stems = _file_stems(names)
    n = len(views)
    with atomic_directory(directory) as tmp:
        for i, stem in enumerate(stems):
            write_image(tmp / "images" / f"{stem}.png", views.images[i])
            if views.depths is not None:
                write_depth(tmp / "depth" / f"{stem}.npy", views.depths[i])
            if views.masks is not None:
                write_mask(tmp / "masks" / f"{stem}.png", views.masks[i])
            if views.normals is not None:
                with atomic_open(tmp / "normals" / f"{stem}.npy", "wb") as fh:
                    np.save(fh, views.normals[i].detach().cpu().float().numpy(), allow_pickle=False)
        if views.cameras is not None:
            write_colmap(tmp / "sparse" / "0", views.cameras, [f"{s}.png" for s in stems], points)
            write_transforms_json(
                tmp / "transforms.json", views.cameras, [f"images/{s}.png" for s in stems],
                depth_paths=None if views.depths is None else [f"depth/{s}.npy" for s in stems],
                mask_paths=None if views.masks is None else [f"masks/{s}.png" for s in stems],
                extra={"depth_unit_scale_factor": 1.0})
        if points is not None:
            write_ply(tmp / "points.ply", points)
        marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_views": n,
                  "image_size": [views.height, views.width], "names": names, "files": stems,
                  "has_cameras": views.cameras is not None, "has_depth": views.depths is not None,
                  "has_masks": views.masks is not None, "has_normals": views.normals is not None,
                  "num_points": 0 if points is None else len(points)}
        with atomic_open(tmp / MARKER, "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=1)
    return directory


# --------------------------------------------------------------------------------------------- describe
def _intrinsics_summary(fxfycxcy: torch.Tensor) -> dict:
    f = fxfycxcy.reshape(-1, 4).double()
    return {k: [round(float(f[:, j].min()), 4), round(float(f[:, j].max()), 4)]
            for j, k in enumerate(("fx", "fy", "cx", "cy"))}


def _sizes(sizes) -> list[list[int]]:
    return [list(s) for s in sorted({(int(h), int(w)) for h, w in sizes})]


def describe(path: str | os.PathLike) -> dict:
    """A summary for ``manyview info``, from headers and metadata (no image is decoded).

    Keys: ``path``, ``format``, ``num_views``, ``image_sizes`` ([[H, W], ...] distinct), ``has_cameras``,
    ``intrinsics`` ({fx, fy, cx, cy: [min, max]} or None), ``num_points``, ``has_depth``, ``has_masks``;
    ``num_scenes`` for RE10K chunk folders.
    """
    p = Path(path)
    fmt = detect_format(p)
    out = {"path": str(p), "format": fmt, "num_views": 0, "image_sizes": [], "has_cameras": False,
           "intrinsics": None, "num_points": 0, "has_depth": False, "has_masks": False}
    if fmt == "manyview":
        meta = _read_marker(p)
        out.update(num_views=len(meta["files"]), image_sizes=[list(meta.get("image_size", []))],
                   has_depth=bool(meta.get("has_depth")), has_masks=bool(meta.get("has_masks")),
                   num_points=int(meta.get("num_points", 0)), has_cameras=bool(meta.get("has_cameras")))
        if out["has_cameras"]:
            out["intrinsics"] = _intrinsics_summary(read_colmap(p / "sparse" / "0").cameras.fxfycxcy)
    elif fmt == "colmap":
        model = read_colmap(find_colmap_model(p))
        out.update(num_views=len(model.names), image_sizes=_sizes(model.cameras.image_size.tolist()),
                   has_cameras=True, intrinsics=_intrinsics_summary(model.cameras.fxfycxcy),
                   num_points=0 if model.points is None else len(model.points))
    elif fmt == "transforms_json":
        meta = parse_transforms_json(_transforms_file(p))
        out.update(num_views=len(meta.file_paths), image_sizes=_sizes(meta.cameras.image_size.tolist()),
                   has_cameras=True, intrinsics=_intrinsics_summary(meta.cameras.fxfycxcy),
                   has_depth=any(d is not None for d in meta.depth_paths),
                   has_masks=any(m is not None for m in meta.mask_paths))
    elif fmt == "images":
        files = [p] if p.is_file() else list_images(p if _has_images(p) else p / "images")
        sizes = []
        for f in files:
            op = open_image(f, 1 << 62, True)
            op.image.close()
            sizes.append(op.upright_size)
        out.update(num_views=len(files), image_sizes=_sizes(sizes))
    elif fmt == "re10k":
        from manyview.io.realestate10k import read_chunk, read_index

        if p.is_file():
            scenes = read_chunk(p)
            out.update(num_scenes=len(scenes), num_views=sum(len(s) for s in scenes), has_cameras=True)
        else:
            out.update(num_scenes=len(read_index(p)), has_cameras=True)
    elif fmt == "ply":
        out.update(num_points=len(read_ply(p)))
    return out
