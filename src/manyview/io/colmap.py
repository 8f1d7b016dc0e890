"""COLMAP sparse models (text or binary) <-> ``Cameras`` / ``PointCloud``, through pycolmap.

Reading takes the pinhole part of every perspective camera model (fx, fy, cx, cy) and drops any lens distortion
(SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV): the images are used as they are, so undistort them first
(``colmap image_undistorter``) when the distortion matters. Which images had non-zero distortion is recorded in
``ColmapModel.distorted`` and reported with one warning. Fisheye and other wide-angle models are refused.
Binary files are checked for truncation before pycolmap reads them (it trusts their counts and can loop forever
on a truncated file), and points are gathered from points3D.bin with numpy. Only images with a pose
(registered) are read; they are ordered by name (natural sort).

Writing produces PINHOLE cameras (one per image, or one shared camera when all intrinsics and sizes are equal),
images with trivial rigs and frames (the COLMAP >= 3.12 layout; older readers ignore rigs.* and frames.*), and
points without tracks. The model directory is built under a temporary name and renamed at the end.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory
from manyview.io.image_decode import open_image
from manyview.io.images import ImageLoadPolicy, load_image_files, natural_key
from manyview.scene import Cameras, PointCloud, Views, apply_to_cameras

_MODEL_NAMES = {f"{stem}{ext}" for stem in ("cameras", "images", "points3D", "rigs", "frames")
                for ext in (".bin", ".txt")} | {"project.ini"}
# Wide-angle and spherical models: their pinhole part alone would be badly wrong, so they are refused.
_NOT_PINHOLE = {"SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE", "FOV", "THIN_PRISM_FISHEYE",
                "RAD_TAN_THIN_PRISM_FISHEYE", "SIMPLE_FISHEYE", "FISHEYE", "EUCM", "EQUIRECTANGULAR"}


@dataclass(frozen=True)
class ColmapModel:
    """A COLMAP model in manyview terms; cameras are at the model's own image sizes."""

    cameras: Cameras  # (N,) registered images, natural-sorted by name
    names: list[str]
    points: PointCloud | None  # xyz, rgb in [0, 1]; None when the model has no points
    image_ids: list[int]
    camera_ids: list[int]
    distorted: dict[str, str] = field(default_factory=dict)  # image name -> camera model whose distortion was dropped
    path: str = ""


def is_colmap_model(path: str | os.PathLike) -> bool:
    p = Path(path)
    return any((p / f"cameras{ext}").is_file() and (p / f"images{ext}").is_file() for ext in (".bin", ".txt"))


def find_colmap_model(root: str | os.PathLike) -> Path | None:
    """The model directory of a dataset folder: ``sparse/0``, ``sparse``, ``colmap/sparse/0`` or the folder itself."""
    root = Path(root)
    for cand in (root / "sparse" / "0", root / "sparse", root / "colmap" / "sparse" / "0", root):
        if is_colmap_model(cand):
            return cand
    sparse = root / "sparse"
    if sparse.is_dir():  # sparse/1, sparse/2, ...: take the first model, as COLMAP numbers them
        for sub in sorted((p for p in sparse.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            if is_colmap_model(sub):
                return sub
    return None


def pose_matrix(image) -> np.ndarray:
    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw  # a method in pycolmap >= 3.12, an attribute before
    return np.asarray(cfw.matrix(), dtype=np.float64)


def has_pose(image) -> bool:
    has = getattr(image, "has_pose", None)
    if has is None:
        return bool(getattr(image, "registered", True))
    return bool(has() if callable(has) else has)


def _flag(obj, name: str, default: bool) -> bool:
    value = getattr(obj, name, default)
    return bool(value() if callable(value) else value)


class _Cursor:
    """Bounds-checked reads over a binary COLMAP file."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise EOFError
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, count: int, item: int):
        if count < 0 or count > (len(self.data) - self.pos) // item:
            raise EOFError
        self.pos += count * item

    def cstring(self):
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise EOFError
        self.pos = end + 1


def _check_binary_model(path: Path) -> None:
    """Walk cameras.bin and images.bin and refuse truncated or corrupt files before pycolmap reads them.

    pycolmap trusts the counts in these files: a truncated images.bin can make it loop forever. (points3D.bin
    is walked by ``read_points_bin``.)
    """
    import pycolmap

    def walk(name, record):
        f = path / name
        cur = _Cursor(f.read_bytes())
        try:
            (count,) = cur.take("<Q")
            if count > len(cur.data):
                raise EOFError
            for _ in range(count):
                record(cur)
        except EOFError:
            raise ManyviewError(f"{name} is truncated or corrupt", f) from None

    n_params: dict[int, int] = {}

    def camera(cur):
        _, model_id, _, _ = cur.take("<IiQQ")
        if model_id not in n_params:
            try:
                n_params[model_id] = len(pycolmap.Camera.create_from_model_id(1, model_id, 1.0, 1, 1).params)
            except Exception:
                raise EOFError from None
        cur.skip(n_params[model_id], 8)

    def image(cur):
        cur.take("<I7dI")
        cur.cstring()
        (n,) = cur.take("<Q")
        cur.skip(n, 24)

    walk("cameras.bin", camera)
    walk("images.bin", image)


_POINT_RECORD = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("track", "<u8")])


def read_points_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points3D.bin -> (ids (P,) uint64, xyz (P, 3) float64, rgb (P, 3) uint8), sorted by id.

    Walks the variable-length records once to find them, then gathers all fields with one numpy index: much
    faster than iterating pycolmap's Point3D objects for millions of points (``_points_pycolmap`` is the
    reference). Refuses truncated or corrupt files.
    """
    path = Path(path)
    data = path.read_bytes()
    size, rec = len(data), _POINT_RECORD.itemsize  # 51 bytes, then 8 per track element
    track_at = struct.Struct("<Q").unpack_from
    try:
        if size < 8:
            raise EOFError
        (count,) = track_at(data, 0)
        if count > (size - 8) // rec:
            raise EOFError
        offsets = np.empty(count, dtype=np.int64)
        pos = 8
        for i in range(count):
            if pos + rec > size:
                raise EOFError
            offsets[i] = pos
            pos += rec + 8 * track_at(data, pos + rec - 8)[0]
        if pos > size:
            raise EOFError
    except EOFError:
        raise ManyviewError("points3D.bin is truncated or corrupt", path) from None
    raw = np.frombuffer(data, dtype=np.uint8)
    records = np.empty(count, dtype=_POINT_RECORD)
    step = 1 << 16  # gather in blocks: the byte index is 8 x 51 bytes per point
    for start in range(0, count, step):
        block = offsets[start:start + step, None] + np.arange(rec)
        records[start:start + step] = raw[block].view(_POINT_RECORD)[:, 0]
    order = np.argsort(records["id"], kind="stable")
    records = records[order]
    return records["id"], records["xyz"].astype(np.float64), records["rgb"].astype(np.uint8)


def _points_pycolmap(rec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of a ``pycolmap.Reconstruction`` as (ids, xyz, rgb), sorted by id (the reference reader)."""
    items = sorted(rec.points3D.items())
    ids = np.array([i for i, _ in items], dtype=np.uint64)
    xyz = np.array([p.xyz for _, p in items], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for _, p in items], dtype=np.uint8).reshape(-1, 3)
    return ids, xyz, rgb


def read_colmap(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> ColmapModel:
    """Read a COLMAP model directory (``cameras``, ``images``, ``points3D`` as .bin or .txt)."""
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise ManyviewError("COLMAP model folder not found" if not path.exists() else "not a folder", path)
    if not is_colmap_model(path):
        raise ManyviewError("no COLMAP model here (expected cameras.bin/images.bin/points3D.bin or the .txt files)",
                            path)
    binary = (path / "cameras.bin").is_file() and (path / "images.bin").is_file()  # pycolmap prefers binary
    if binary:
        _check_binary_model(path)
        points_bin = read_points_bin(path / "points3D.bin") if (path / "points3D.bin").is_file() else None
    try:
        rec = pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap reports bad files as ValueError, RuntimeError or MemoryError
        raise ManyviewError(f"cannot read COLMAP model: {str(e).strip() or type(e).__name__}", path) from None

    images = [im for im in rec.images.values() if has_pose(im)]
    if not images:
        raise ManyviewError("COLMAP model has no registered images", path)
    images.sort(key=lambda im: natural_key(im.name))
    fxfycxcy, w2c, sizes, distorted = [], [], [], {}
    for im in images:
        cam = rec.cameras[im.camera_id]
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        wide = _flag(cam, "is_perspective_fisheye", False) or not _flag(cam, "is_perspective", True)
        if model in _NOT_PINHOLE or wide:
            raise ManyviewError(f"camera {im.camera_id} ({model}) of image {im.name!r} is not a perspective camera; "
                                "undistort the images first (colmap image_undistorter)", path)
        params = np.asarray(cam.params, dtype=np.float64)
        extra = list(cam.extra_params_idxs()) if callable(getattr(cam, "extra_params_idxs", None)) else []
        if extra and np.any(params[extra] != 0):
            distorted[im.name] = model
        fxfycxcy.append([cam.focal_length_x, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y])
        w2c.append(np.vstack([pose_matrix(im), [0.0, 0.0, 0.0, 1.0]]))
        sizes.append([cam.height, cam.width])
    if distorted:
        warnings.warn(f"{path}: lens distortion of {len(distorted)} image(s) ignored "
                      f"(models: {', '.join(sorted(set(distorted.values())))}); undistort the images for exact "
                      "geometry",
                      stacklevel=2)
    cameras = Cameras.from_w2c(torch.tensor(np.array(fxfycxcy), dtype=dtype), torch.tensor(np.array(w2c), dtype=dtype),
                               torch.tensor(sizes, dtype=torch.int64))
    points = None
    if rec.num_points3D() > 0:  # by point id, the order they were written in
        _, xyz, rgb = points_bin if binary and points_bin is not None else _points_pycolmap(rec)
        points = PointCloud(torch.tensor(xyz, dtype=dtype), torch.tensor(rgb, dtype=torch.float32) / 255.0)
    return ColmapModel(cameras, [im.name for im in images], points, [int(im.image_id) for im in images],
                       [int(im.camera_id) for im in images], distorted, str(path))


def _images_folder(root: Path, model_dir: Path) -> Path:
    for cand in (root / "images", model_dir.parent.parent / "images", model_dir / "images", root):
        if cand.is_dir() and cand != model_dir:
            return cand
    return root / "images"


def read_colmap_dataset(root: str | os.PathLike, policy: ImageLoadPolicy | None = None,
                        images_dir: str | os.PathLike | None = None) -> tuple[Views, ColmapModel]:
    """A dataset folder (``sparse/0`` or ``sparse`` + ``images/``) -> ``Views`` with loaded images and cameras.

    Cameras are moved onto the loaded images (resize and crop of the policy). Images are loaded in their stored
    orientation, as COLMAP saw them (EXIF orientation is not applied), unless a camera fits only the upright image.
    """
    root = Path(root)
    model_dir = find_colmap_model(root)
    if model_dir is None:
        raise ManyviewError("no COLMAP model found (looked for sparse/0, sparse, colmap/sparse/0 and the folder "
                            "itself)", root)
    model = read_colmap(model_dir)
    folder = Path(images_dir) if images_dir is not None else _images_folder(root, model_dir)
    paths = [folder / name for name in model.names]
    for name, p in zip(model.names, paths):
        if not p.is_file():
            raise ManyviewError(f"image {name!r} of the COLMAP model {model_dir} is missing", p)
    policy = policy or ImageLoadPolicy()
    exif = []
    for i, p in enumerate(paths):
        op = open_image(p, policy.max_pixels, True)
        op.image.close()
        cam_hw = tuple(model.cameras.image_size[i].tolist())
        # COLMAP computes cameras on the stored pixels (it does not apply EXIF orientation), so neither do we,
        # unless the camera only fits the upright image (the photos were rotated after reconstruction).
        exif.append(op.orientation in (5, 6, 7, 8) and _same_aspect(cam_hw, op.upright_size)
                    and not _same_aspect(cam_hw, op.raw_size))
    views, transforms = load_image_files(paths, policy, names=model.names, exif_orientation=exif)
    return replace(views, cameras=apply_to_cameras(model.cameras, transforms)), model


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs((a[1] / a[0]) / (b[1] / b[0]) - 1) <= 0.01


def _shared(cameras: Cameras) -> bool:
    f = cameras.fxfycxcy.reshape(-1, 4)
    s = cameras.image_size.reshape(-1, 2)
    return bool((f == f[:1]).all() and (s == s[:1]).all())


def build_reconstruction(cameras: Cameras, names: Sequence[str], points: PointCloud | None = None,
                         shared_camera: bool | None = None):
    """A ``pycolmap.Reconstruction`` with PINHOLE cameras, posed images and track-less points."""
    import pycolmap

    cameras = cameras.to(device="cpu", dtype=torch.float64)
    n = len(cameras) if len(cameras.shape) else 1
    cameras = cameras if len(cameras.shape) else cameras[None]
    if len(names) != n:
        raise ValueError(f"{n} cameras but {len(names)} names")
    if len(set(names)) != n:
        raise ManyviewError("image names must be unique for a COLMAP model")
    share = _shared(cameras) if shared_camera is None else shared_camera
    if share and not _shared(cameras):
        raise ManyviewError("shared_camera=True but the cameras' intrinsics or image sizes differ")
    rec = pycolmap.Reconstruction()
    f, size, w2c = cameras.fxfycxcy.numpy(), cameras.image_size.numpy(), cameras.w2c.numpy()
    for i in range(1 if share else n):
        cam = pycolmap.Camera(model="PINHOLE", width=int(size[i, 1]), height=int(size[i, 0]),
                              params=[float(v) for v in f[i]], camera_id=i + 1)
        if hasattr(rec, "add_camera_with_trivial_rig"):
            rec.add_camera_with_trivial_rig(cam)
        else:  # pycolmap < 3.12: no rigs
            rec.add_camera(cam)
    for i, name in enumerate(names):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[i, :3, :3]), w2c[i, :3, 3])
        image = pycolmap.Image(name=str(name), camera_id=1 if share else i + 1, image_id=i + 1)
        if hasattr(rec, "add_image_with_trivial_frame"):
            rec.add_image_with_trivial_frame(image, pose)
        else:  # pycolmap < 3.12
            image.cam_from_world = pose
            rec.add_image(image)
            rec.register_image(i + 1)
    if points is not None and len(points):
        xyz = points.xyz.detach().cpu().double().numpy()
        rgb = (np.full((len(points), 3), 128, dtype=np.uint8) if points.rgb is None else
               np.round(points.rgb.detach().cpu().float().clamp(0, 1).numpy() * 255).astype(np.uint8))
        track = pycolmap.Track()
        for p, c in zip(xyz, rgb):
            rec.add_point3D(p, track, c)
    return rec


def write_colmap(directory: str | os.PathLike, cameras: Cameras, names: Sequence[str],
                 points: PointCloud | None = None, text: bool = False,
                 shared_camera: bool | None = None) -> Path:
    """Write a COLMAP model (binary, or text with ``text=True``) into ``directory``, replacing it atomically.

    ``shared_camera``: None shares one camera when all intrinsics and sizes are equal; True requires it; False
    writes one camera per image.
    """
    directory = Path(directory)
    if text:
        bad = [n for n in names if any(c.isspace() for c in str(n))]
        if bad:
            raise ManyviewError(f"image name {bad[0]!r} contains white space, which COLMAP's text format cannot "
                                "store; write binary (text=False) or rename the images", directory)
    if directory.is_dir():  # the folder is replaced as a whole: never take user files with it
        foreign = [p.name for p in directory.iterdir() if p.name not in _MODEL_NAMES]
        if foreign:
            raise ManyviewError(f"refusing to replace a folder that holds more than a COLMAP model "
                                f"(e.g. {foreign[0]!r}); write the model into its own folder such as sparse/0",
                                directory)
    rec = build_reconstruction(cameras, names, points, shared_camera)
    with atomic_directory(directory) as tmp:
        try:
            rec.write_text(str(tmp)) if text else rec.write_binary(str(tmp))
        except Exception as e:
            raise ManyviewError(f"cannot write COLMAP model: {e}", directory) from None
    return directory
