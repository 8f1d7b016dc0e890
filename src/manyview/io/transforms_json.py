"""nerfstudio / instant-ngp / NeRF-synthetic ``transforms.json`` <-> ``Cameras`` and ``Views``.

The format: ``frames`` is a list of ``{"file_path", "transform_matrix", ...}`` where ``transform_matrix`` is an
OpenGL / Blender camera-to-world (x right, y up, z back). Intrinsics ``fl_x, fl_y, cx, cy, w, h`` sit at the top
level when shared and in a frame when not (a frame's value wins). NeRF-synthetic files give ``camera_angle_x``
(horizontal field of view, radians) instead of focal lengths and no image size (read from the image); their
``file_path`` has no extension. ``cx, cy`` default to the image centre, ``fl_y`` to ``fl_x``. Distortion
(``k1, k2, k3, k4, p1, p2``) is ignored with a warning, as for COLMAP. ``depth_file_path`` and ``mask_path`` are
optional; depth values are multiplied by the top-level ``depth_unit_scale_factor`` (nerfstudio's default 1e-3:
PNG depth in millimetres). Paths are relative to the JSON file's folder.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open
from manyview.io.images import IMAGE_EXTENSIONS, ImageLoadPolicy, load_image_files, read_image_size
from manyview.io.pixel_maps import read_depth, read_mask
from manyview.scene import Cameras, Views, apply_to_cameras

_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
_UNSUPPORTED_MODELS = ("OPENCV_FISHEYE", "EQUIRECTANGULAR", "FISHEYE624")
DEFAULT_DEPTH_UNIT_SCALE = 1e-3  # nerfstudio's default: depth PNGs in millimetres


@dataclass(frozen=True)
class TransformsJson:
    """A parsed transforms.json; cameras are at the sizes the file states (or the image files have)."""

    cameras: Cameras  # (N,)
    file_paths: list[str]  # as written in the file
    image_paths: list[Path]  # resolved (extension added when the file omits it)
    depth_paths: list[Path | None]
    mask_paths: list[Path | None]
    depth_unit_scale: float
    distorted: list[int] = field(default_factory=list)  # frame indices whose distortion was dropped
    path: str = ""

    @property
    def names(self) -> list[str]:
        """Image paths relative to the JSON's folder (posix), unique per frame."""
        root = Path(self.path).parent
        out = []
        for p in self.image_paths:
            try:
                out.append(p.relative_to(root).as_posix())
            except ValueError:
                out.append(p.as_posix())
        return out


def _resolve_image(root: Path, file_path: str) -> Path:
    p = Path(file_path)
    p = p if p.is_absolute() else root / p
    if p.is_file():
        return p
    if p.suffix.lower() not in IMAGE_EXTENSIONS:  # NeRF-synthetic: "./train/r_0" means r_0.png
        for ext in (".png", ".jpg", ".jpeg", ".webp", ".PNG", ".JPG", ".JPEG"):
            cand = p.with_name(p.name + ext)
            if cand.is_file():
                return cand
    return p


def _number(value: Any, key: str, where: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManyviewError(f"{where}: key {key!r} must be a finite number, got {value!r}", path)
    return float(value)


def parse_transforms_json(path: str | os.PathLike) -> TransformsJson:
    """Read the file and resolve every frame's camera; images are only opened when a size must be read from them."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("transforms.json not found" if not path.exists() else "not a file", path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManyviewError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except (UnicodeDecodeError, OSError) as e:
        raise ManyviewError(f"cannot read file: {e}", path) from None
    if not isinstance(meta, dict):
        raise ManyviewError("top level must be a JSON object with a 'frames' list", path)
    if "frames" not in meta:
        raise ManyviewError("missing key 'frames'", path)
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise ManyviewError("'frames' must be a non-empty list", path)
    model = meta.get("camera_model", "OPENCV")
    root = path.parent
    fxfycxcy, c2w, sizes, images, depths, masks, distorted = [], [], [], [], [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise ManyviewError(f"frame {i} must be a JSON object", path)
        where = f"frame {i}"

        def get(key, default=None, required=False):
            if key in frame:
                return frame[key]
            if key in meta:
                return meta[key]
            if required:
                raise ManyviewError(f"{where}: missing key {key!r}", path)
            return default

        if "file_path" not in frame:
            raise ManyviewError(f"{where}: missing key 'file_path'", path)
        if not isinstance(frame["file_path"], str):
            raise ManyviewError(f"{where}: 'file_path' must be a string", path)
        where = f"frame {i} ({frame['file_path']})"
        if get("camera_model", model) in _UNSUPPORTED_MODELS:
            raise ManyviewError(f"{where}: camera model {get('camera_model', model)!r} is not a pinhole camera", path)
        if "transform_matrix" not in frame:
            raise ManyviewError(f"{where}: missing key 'transform_matrix'", path)
        try:
            m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
            raise ManyviewError(f"{where}: 'transform_matrix' must be a 4x4 (or 3x4) matrix of finite numbers", path)
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        image = _resolve_image(root, frame["file_path"])
        w, h = get("w"), get("h")
        if w is None or h is None:
            if not image.is_file():
                raise ManyviewError(f"{where}: missing key {'w' if w is None else 'h'!r} and the image to read the "
                                    f"size from is missing too ({image})", path)
            h, w = read_image_size(image, exif_orientation=False)
        w, h = _number(w, "w", where, path), _number(h, "h", where, path)
        if w < 1 or h < 1 or w != int(w) or h != int(h):
            raise ManyviewError(f"{where}: image size w={w:g}, h={h:g} must be positive integers", path)
        fx = get("fl_x")
        if fx is None:
            angle = get("camera_angle_x")
            if angle is None:
                raise ManyviewError(f"{where}: missing key 'fl_x' (or 'camera_angle_x')", path)
            fx = 0.5 * w / math.tan(0.5 * _number(angle, "camera_angle_x", where, path))
        fy = get("fl_y")
        if fy is None:
            angle = get("camera_angle_y")
            fy = fx if angle is None else 0.5 * h / math.tan(0.5 * _number(angle, "camera_angle_y", where, path))
        cx, cy = get("cx", w / 2), get("cy", h / 2)
        fxfycxcy.append([_number(v, k, where, path) for v, k in ((fx, "fl_x"), (fy, "fl_y"), (cx, "cx"), (cy, "cy"))])
        if any(_number(get(k, 0.0), k, where, path) != 0.0 for k in _DISTORTION):
            distorted.append(i)
        c2w.append(m)
        sizes.append([int(h), int(w)])
        images.append(image)
        for key, out in (("depth_file_path", depths), ("mask_path", masks)):
            value = frame.get(key)
            if value is not None and not isinstance(value, str):
                raise ManyviewError(f"{where}: {key!r} must be a string", path)
            out.append(None if value is None else (Path(value) if Path(value).is_absolute() else root / value))
    if distorted:
        warnings.warn(f"{path}: lens distortion of {len(distorted)} frame(s) ignored; undistort the images for "
                      "exact geometry", stacklevel=2)
    scale = _number(meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT_SCALE), "depth_unit_scale_factor",
                    "top level", path)
    cameras = Cameras.from_opengl(torch.tensor(fxfycxcy, dtype=torch.float64), torch.tensor(np.array(c2w)),
                                  torch.tensor(sizes, dtype=torch.int64))
    return TransformsJson(cameras, [f["file_path"] for f in frames], images, depths, masks, scale, distorted,
                          str(path))


def read_transforms_json(path: str | os.PathLike, policy: ImageLoadPolicy | None = None,
                         dtype: torch.dtype = torch.float32) -> Views:
    """transforms.json -> ``Views`` with images, cameras moved onto the loaded images, depths and masks if listed.

    Images are loaded as stored (no EXIF rotation): the file's sizes and poses describe the stored pixels.
    """
    meta = parse_transforms_json(path)
    for i, p in enumerate(meta.image_paths):
        if not p.is_file():
            raise ManyviewError(f"image of frame {i} ({meta.file_paths[i]!r}) not found", p)
    policy = replace(policy or ImageLoadPolicy(), exif_orientation=False)
    views, transforms = load_image_files(meta.image_paths, policy, names=meta.names)
    cameras = apply_to_cameras(meta.cameras, transforms).to(dtype)
    depths = masks = None
    if any(p is not None for p in meta.depth_paths):
        if not all(p is not None for p in meta.depth_paths):
            raise ManyviewError("some frames have 'depth_file_path' and others do not", path)
        depths = torch.stack([t.apply_map(read_depth(p, units_per_metre=1.0)) for p, t in
                              zip(meta.depth_paths, transforms)]) * meta.depth_unit_scale
    if any(p is not None for p in meta.mask_paths):
        if not all(p is not None for p in meta.mask_paths):
            raise ManyviewError("some frames have 'mask_path' and others do not", path)
        masks = torch.stack([t.apply_map(read_mask(p)) for p, t in zip(meta.mask_paths, transforms)])
    return replace(views, cameras=cameras, depths=depths, masks=masks)


def transforms_dict(cameras: Cameras, file_paths: Sequence[str], depth_paths: Sequence[str] | None = None,
                    mask_paths: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """The JSON object for ``cameras``: shared intrinsics at the top level, per-frame ones otherwise."""
    cameras = cameras.to(device="cpu", dtype=torch.float64)
    n = len(cameras)
    if len(file_paths) != n:
        raise ValueError(f"{n} cameras but {len(file_paths)} file paths")
    for name, seq in (("depth_paths", depth_paths), ("mask_paths", mask_paths)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} cameras but {len(seq)} {name}")
    f, size, gl = cameras.fxfycxcy.tolist(), cameras.image_size.tolist(), cameras.to_opengl().tolist()

    def intrinsics(i):
        return {"fl_x": f[i][0], "fl_y": f[i][1], "cx": f[i][2], "cy": f[i][3], "w": size[i][1], "h": size[i][0]}

    shared = all(f[i] == f[0] and size[i] == size[0] for i in range(n))
    out: dict[str, Any] = {"camera_model": "OPENCV"}
    if shared:
        out.update(intrinsics(0))
    frames = []
    for i in range(n):
        frame: dict[str, Any] = {"file_path": str(file_paths[i])}
        if not shared:
            frame.update(intrinsics(i))
        frame["transform_matrix"] = gl[i]
        if depth_paths is not None:
            frame["depth_file_path"] = str(depth_paths[i])
        if mask_paths is not None:
            frame["mask_path"] = str(mask_paths[i])
        frames.append(frame)
    out.update(extra or {})
    out["frames"] = frames
    return out


def write_transforms_json(path: str | os.PathLike, cameras: Cameras, file_paths: Sequence[str],
                          depth_paths: Sequence[str] | None = None, mask_paths: Sequence[str] | None = None,
                          extra: dict | None = None) -> Path:
    """Write a nerfstudio-style transforms.json atomically; paths are written as given (relative to the file)."""
    path = Path(path)
    data = transforms_dict(cameras, file_paths, depth_paths, mask_paths, extra)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return path
