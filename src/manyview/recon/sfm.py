"""COLMAP incremental structure-from-motion through pycolmap: manyview's classical baseline and pose source.

``run_colmap_sfm(images)`` runs SIFT extraction, exhaustive or sequential matching with geometric verification,
and incremental mapping, all on the CPU, and returns an :class:`SfmResult` in manyview terms.

Choices, and why:
- Every input view gets a camera, registered or not. Unregistered views have NaN poses (``c2w`` all NaN), so
  using one by mistake poisons the result visibly instead of silently placing it at the origin; select the
  registered ones with ``result.cameras[result.registered]``. Their intrinsics are the shared camera's
  (refined, with ``single_camera=True``) or COLMAP's prior (focal 1.2 x the longer side, centred principal point).
- A scene where mapping registers nothing returns a result with ``registration_rate == 0`` and no points rather
  than raising: for benchmarks "SfM failed on this scene" is a measurement. Input that cannot be reconstructed
  at all (no images, fewer than two, unreadable files, COLMAP reading none of them) raises ``ManyviewError``.
- COLMAP may split the scene into several models; the one with the most registered images is kept (ties: most
  points) and ``num_models`` says how many there were. Views outside it count as unregistered.
- Cameras are returned as pinhole intrinsics at the input images' full resolution (``max_image_size`` only
  limits the copies SIFT sees). With a distorted ``camera_model`` (SIMPLE_RADIAL, OPENCV, ...) the distortion is
  estimated during mapping and returned in COLMAP's own terms (``camera_params``); the pinhole ``cameras`` are
  exact only for undistorted images, which ``undistorted_dir`` asks for (pycolmap's undistorter: images resampled
  to PINHOLE cameras, cropped so that no blank pixels remain, and the model moved onto them).
- Why few views registered is measured, not guessed: SIFT features per image and the image pairs whose matches
  passed geometric verification are returned, and :func:`require_registered` turns them into one sentence.
- Image files are oriented as stored unless they carry an EXIF orientation, in which case an upright copy is
  given to COLMAP, so that cameras match ``manyview.io.images`` (which applies EXIF orientation by default).
- ``seed`` seeds COLMAP's RANSAC and mapper. Repeated runs with 2 threads gave identical results here, but
  COLMAP's multi-threaded stages do not promise it; use ``num_threads=1`` when exact repeats matter.

With ``undistorted_dir`` the registered images, undistorted, and their PINHOLE model are written there
(``images/``, ``sparse/0/``: a COLMAP dataset every reader of manyview takes), replacing an earlier one; nothing is
written there when nothing registered. With ``work_dir`` the COLMAP database (``database.db``), the kept model
(``sparse/0``, absent when nothing registered) and, for tensor input, the images written for COLMAP (``images/``)
are kept there, replacing those of an earlier run: the layout ``manyview.io.colmap`` reads back. Without it
everything lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory, atomic_path
from manyview.io.colmap import has_pose, pose_matrix
from manyview.io.image_decode import DEFAULT_MAX_PIXELS, open_image
from manyview.io.image_writers import write_image
from manyview.io.images import list_images
from manyview.progress import progress as progress_bar
from manyview.scene import Cameras, PointCloud, Views

# Perspective models whose first parameters are the pinhole part; fisheye models cannot be returned as pinholes.
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
MATCHERS = ("exhaustive", "sequential")
MIN_FEATURES = 100  # a median below this many SIFT features per image is "too little texture"
_DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's prior focal length, times the longer image side, without EXIF


@dataclass(frozen=True, eq=False)
class SfmResult:
    """What incremental SfM recovered, in the input's view order."""

    cameras: Cameras  # (N,) every input view; c2w is NaN where not registered
    registered: Tensor  # (N,) bool
    points: PointCloud  # (P,) xyz in the SfM frame, rgb in [0, 1] (colours COLMAP sampled from the images)
    point_errors: Tensor  # (P,) mean reprojection error of each point over its track, px
    track_lengths: Tensor  # (P,) int64 number of images observing each point
    names: list[str]  # (N,) view names: the files' names, or Views.names for tensor input
    mean_reprojection_error: float  # px, COLMAP's: mean over points of point_errors; NaN when nothing registered
    num_models: int  # models COLMAP built (0 when mapping failed); the largest is kept
    wall_time: float  # seconds for the whole call
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: features, matching, mapping
    camera_model: str = "SIMPLE_PINHOLE"
    work_dir: str | None = None  # where database.db and sparse/0 were kept, if asked
    camera_params: list[list[float]] = field(default_factory=list)  # (N,) COLMAP's params of camera_model per view
    features: Tensor | None = None  # (N,) int64 SIFT keypoints per view (0 where COLMAP could not read the file)
    verified_pairs: int = 0  # image pairs whose matches passed geometric verification
    undistorted_dir: str | None = None  # where the undistorted images and PINHOLE model were written, if asked
    model_names: list[str] = field(default_factory=list)  # (N,) each view's name in the COLMAP model and database

    @property
    def num_registered(self) -> int:
        return int(self.registered.sum())

    @property
    def registration_rate(self) -> float:
        """Fraction of the input views registered in the kept model, in [0, 1]."""
        return self.num_registered / max(len(self.names), 1)

    def registered_cameras(self) -> Cameras:
        """(R,) the registered views' cameras, in input order."""
        return self.cameras[self.registered]

    @property
    def unregistered_names(self) -> list[str]:
        return [name for name, ok in zip(self.names, self.registered.tolist()) if not ok]

    def why_few_registered(self) -> str:
        """What the measurements say about a poor registration: too little texture, too few matches, or views
        that matched but did not join the kept model."""
        n = len(self.names)
        pairs = n * (n - 1) // 2
        median = int(self.features.median()) if self.features is not None and len(self.features) else 0
        if median < MIN_FEATURES:
            return (f"too little texture: a median of {median} SIFT features per image (COLMAP needs a few hundred "
                    "to match photos)")
        if self.verified_pairs < max(1, n - 1):
            return (f"too few matches: only {self.verified_pairs} of {pairs} image pairs share enough verified "
                    f"feature matches (a median of {median} features per image); the photos may overlap too "
                    "little or show the scene from too far apart")
        if self.num_models > 1:
            return (f"the photos fall into groups that do not match each other: COLMAP built {self.num_models} "
                    "separate models and kept the largest; more photos between the groups would join them")
        return (f"{self.verified_pairs} of {pairs} image pairs matched, but incremental mapping found no "
                "well-conditioned start (too little parallax between the photos, or a flat scene)")


@contextlib.contextmanager
def colmap_log():
    """COLMAP's log silenced but for fatal errors, restored afterwards: glog would otherwise leave log files in /tmp
    and print every INFO line. Failures reach the caller through the results (unregistered views, the reasons
    :meth:`SfmResult.why_few_registered` gives), so COLMAP's own error lines would only be a commentary that
    breaks the one-line error a command prints. MANYVIEW_COLMAP_LOG=1 shows COLMAP's errors, =2 its INFO lines
    too."""
    import pycolmap

    old = (pycolmap.logging.logtostderr, pycolmap.logging.minloglevel)
    level = {"1": 2, "2": 0}.get(os.environ.get("MANYVIEW_COLMAP_LOG", ""), 3)
    pycolmap.logging.logtostderr, pycolmap.logging.minloglevel = True, level
    try:
        yield
    finally:
        pycolmap.logging.logtostderr, pycolmap.logging.minloglevel = old


def require_registered(result: SfmResult, minimum: int = 3, where=None) -> None:
    """Raise one clear ManyviewError when fewer than ``minimum`` views registered, saying how many and why."""
    if result.num_registered >= minimum:
        return
    raise ManyviewError(f"COLMAP registered {result.num_registered} of {len(result.names)} photos, fewer than the "
                        f"{minimum} a reconstruction needs: {result.why_few_registered()}", where)


def undistort_model(model_dir: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                    num_threads: int = 2) -> Path:
    """pycolmap's undistorter: the registered images of the model in ``model_dir`` (read from ``image_root``)
    resampled to PINHOLE cameras, written with the model moved onto them as ``out_dir/images`` and
    ``out_dir/sparse/0`` (built under a temporary name, replacing an earlier ``out_dir``)."""
    import pycolmap

    out_dir = Path(out_dir)
    with colmap_log(), tempfile.TemporaryDirectory(prefix="manyview-undistort-") as tmp_name:
        tmp = Path(tmp_name)
        options = pycolmap.UndistortCameraOptions()  # defaults: crop to the valid region, no blank pixels
        pycolmap.undistort_images(str(tmp), str(model_dir), str(image_root), output_type="COLMAP",
                                  undistort_options=options, jpeg_quality=100, num_threads=num_threads)
        with atomic_directory(out_dir) as dst:
            shutil.move(str(tmp / "images"), str(dst / "images"))
            (dst / "sparse").mkdir()
            shutil.move(str(tmp / "sparse"), str(dst / "sparse" / "0"))
    return out_dir


# ------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class ColmapInput:
    """Images laid out for COLMAP: a root folder and each view's name under it."""

    image_root: Path  # the folder COLMAP reads from
    image_names: list[str]  # relative to image_root, one per view, in view order
    names: list[str]  # what SfmResult reports
    sizes: list[tuple[int, int]]  # (H, W) upright, one per view
    written: bool  # True when the images were written by us (tensor input)


def _resolve_paths(images) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if p.is_dir():
            return list_images(p)  # raises for a folder without images
        if not p.exists():
            raise ManyviewError("image folder or file not found", p)
        return [p]
    paths = [Path(p) for p in images]
    if not paths:
        raise ManyviewError("no images given to SfM (an empty list)")
    return paths


def _prepare_files(paths: list[Path], tmp: Path) -> ColmapInput:
    """Validate the files and find a root folder from which COLMAP sees each of them under a unique name."""
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, Path] = {}
    for p, r in zip(paths, resolved):
        if r in seen:
            raise ManyviewError(f"the same image is given twice (also as {seen[r]})", p)
        seen[r] = p
    sizes, rotated = [], []
    for p in paths:
        op = open_image(p, DEFAULT_MAX_PIXELS, exif_orientation=True)  # raises ManyviewError for missing / bad files
        try:
            op.image.load()  # decode once: a truncated file fails here, with its name, not inside COLMAP
        except Exception as e:
            raise ManyviewError(f"cannot decode image: {e}", p) from None
        finally:
            op.image.close()
        sizes.append(op.upright_size)
        rotated.append(op.orientation != 1)
    root = Path(os.path.commonpath([r.parent for r in resolved]))
    rel = [r.relative_to(root).as_posix() for r in resolved]
    names = [p.name for p in paths] if len({p.name for p in paths}) == len(paths) else rel
    if any(rotated):  # COLMAP reads pixels as stored: give it upright PNG copies and links to the others
        from PIL import Image, ImageOps

        upright = tmp / "upright"
        for i, (r, rot) in enumerate(zip(resolved, rotated)):
            rel[i] = rel[i] + ".png" if rot else rel[i]
            dst = upright / rel[i]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rot:
                with Image.open(r) as im:
                    ImageOps.exif_transpose(im).convert("RGB").save(dst, format="PNG")
            else:
                try:
                    os.symlink(r, dst)
                except OSError:  # no symlinks (Windows without developer mode): copy
                    shutil.copyfile(r, dst)
        root = upright
    return ColmapInput(root, rel, names, sizes, written=False)


def prepare_input(images: Views | str | os.PathLike | Sequence[str | os.PathLike], tmp: Path) -> ColmapInput:
    """``images`` (Views, a folder or image files) laid out for COLMAP inside the temporary folder ``tmp``: files
    are checked and used in place (upright copies where EXIF says so), Views written as PNGs."""
    if isinstance(images, Views):
        return _prepare_views(images, tmp / "images")
    return _prepare_files(_resolve_paths(images), tmp)


def _prepare_views(views: Views, folder: Path) -> ColmapInput:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(views)
    files = [f"{i:05d}.png" for i in range(n)]
    images = views.images.detach().cpu()
    for i, name in enumerate(files):
        write_image(folder / name, images[i])  # 8-bit PNG: lossless for what SIFT sees
    names = list(views.names) if views.names else files
    return ColmapInput(folder, files, names, [(views.height, views.width)] * n, written=True)


# ------------------------------------------------------------------------------------------- COLMAP
def colmap_options(pycolmap, num_threads: int, max_image_size: int, max_num_features: int, seed: int,
                   camera_model: str):
    """COLMAP's options for CPU extraction, matching, verification and mapping, seeded (also used by refine)."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.use_gpu = False
    extraction.max_image_size = max_image_size
    extraction.sift.max_num_features = max_num_features
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = num_threads
    mapping.random_seed = seed
    mapping.mapper.random_seed = seed
    mapping.triangulation.random_seed = seed
    mapping.ba_use_gpu = False
    return reader, extraction, matching, verification, mapping


def _largest(models: dict) -> tuple[object | None, int]:
    recs = list(models.values())
    if not recs:
        return None, 0
    return max(recs, key=lambda r: (r.num_reg_images(), r.num_points3D())), len(recs)


def _prior_intrinsics(size: tuple[int, int]) -> list[float]:
    h, w = size
    f = _DEFAULT_FOCAL_FACTOR * max(h, w)
    return [f, f, w / 2.0, h / 2.0]


def _camera_row(cam) -> list[float]:
    return [cam.focal_length_x, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y]


def _collect(rec, db_cameras: dict, db_images: dict, inp: ColmapInput, dtype: torch.dtype):
    """(cameras, registered, points, errors, track lengths) in view order from the kept model."""
    n = len(inp.image_names)
    fxfycxcy = np.zeros((n, 4))
    c2w = np.full((n, 4, 4), np.nan)
    sizes = np.zeros((n, 2), dtype=np.int64)
    registered = np.zeros(n, dtype=bool)
    params: list[list[float]] = []
    for i, name in enumerate(inp.image_names):
        image = rec.find_image_with_name(name) if rec is not None else None
        db_image = db_images.get(name)
        if image is not None and rec.exists_camera(image.camera_id):
            cam = rec.cameras[image.camera_id]
        elif db_image is not None:
            cam = db_cameras[db_image.camera_id]
        else:
            cam = None
        if cam is not None:
            fxfycxcy[i] = _camera_row(cam)
            sizes[i] = (cam.height, cam.width)
            params.append([float(v) for v in cam.params])
        else:  # COLMAP could not read this file: report its size and COLMAP's prior, unregistered
            fxfycxcy[i] = _prior_intrinsics(inp.sizes[i])
            sizes[i] = inp.sizes[i]
            params.append([])
        if image is not None and has_pose(image):
            w2c = np.vstack([pose_matrix(image), [0.0, 0.0, 0.0, 1.0]])
            c2w[i] = np.linalg.inv(w2c)
            registered[i] = True
    cameras = Cameras(torch.tensor(fxfycxcy, dtype=dtype), torch.tensor(c2w, dtype=dtype), torch.from_numpy(sizes))
    pts = list(rec.points3D.values()) if rec is not None else []
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.float32).reshape(-1, 3) / 255.0
    errors = np.array([p.error for p in pts], dtype=np.float64)
    tracks = np.array([p.track.length() for p in pts], dtype=np.int64)
    points = PointCloud(torch.tensor(xyz, dtype=dtype), torch.from_numpy(rgb))
    return (cameras, torch.from_numpy(registered), points, torch.tensor(errors, dtype=dtype), torch.from_numpy(tracks),
            params)


def _match_statistics(db_path: Path, db_images: dict, inp: ColmapInput) -> tuple[Tensor, int]:
    """(SIFT keypoints per view, image pairs with verified matches) from the database."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        features = [db.num_keypoints_for_image(db_images[name].image_id) if name in db_images else 0
                    for name in inp.image_names]
        _, inliers = db.read_two_view_geometry_num_inliers()
    finally:
        db.close()
    return torch.tensor(features, dtype=torch.int64), sum(1 for k in inliers if k > 0)


def _keep(work_dir: Path, db_path: Path, rec, inp: ColmapInput) -> None:
    with atomic_path(work_dir / "database.db") as dst:
        shutil.copyfile(db_path, dst)
    if rec is not None:
        with atomic_directory(work_dir / "sparse" / "0") as dst:
            rec.write_binary(str(dst))
    elif (work_dir / "sparse" / "0").is_dir():  # an earlier run's model would not match the new database
        shutil.rmtree(work_dir / "sparse" / "0")
    if inp.written:
        with atomic_directory(work_dir / "images") as dst:
            for name in inp.image_names:
                shutil.copyfile(inp.image_root / name, dst / name)


def run_colmap_sfm(
    images: Views | str | os.PathLike | Sequence[str | os.PathLike],
    *,
    work_dir: str | os.PathLike | None = None,
    undistorted_dir: str | os.PathLike | None = None,
    camera_model: str = "SIMPLE_PINHOLE",
    single_camera: bool = True,
    matcher: Literal["exhaustive", "sequential"] = "exhaustive",
    max_image_size: int = 1600,
    max_num_features: int = 8192,
    num_threads: int = 2,
    seed: int = 0,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> SfmResult:
    """Incremental SfM (SIFT, matching, mapping) on ``images``: a ``Views`` (images (N, 3, H, W) in [0, 1]),
    a folder (its images, natural-sorted), or a list of image files.

    ``single_camera``: one camera shared by all views (the usual case for one capture) or one per view.
    ``matcher``: "exhaustive" matches every pair; "sequential" matches each view with its neighbours in input
    order (videos). ``max_image_size``: the longer side SIFT sees, in pixels (larger images are downscaled for
    extraction only). ``max_num_features``: SIFT features kept per image (COLMAP's default); CPU matching costs
    about its square per pair, and the number of pairs grows with N^2 for "exhaustive" (29 images of 854x480:
    about 100 s of matching on 2 cores). ``progress``: a bar with the current stage; COLMAP's own log is silent
    (:func:`colmap_log`). ``undistorted_dir``: write the registered images undistorted,
    with PINHOLE cameras (see the module docstring), as every later stage wants them. See the module docstring for
    how unregistered views and failures are reported.
    """
    import pycolmap

    start = time.perf_counter()
    if not hasattr(pycolmap, "FeatureExtractionOptions") or not hasattr(pycolmap.Database, "open"):
        raise ManyviewError(f"run_colmap_sfm needs pycolmap 4 (tested with 4.2); this is pycolmap "
                            f"{getattr(pycolmap, '__version__', '?')}")
    if camera_model not in CAMERA_MODELS:
        raise ManyviewError(f"camera_model {camera_model!r} is not supported; use one of {', '.join(CAMERA_MODELS)}")
    if matcher not in MATCHERS:
        raise ManyviewError(f"matcher {matcher!r} is not supported; use one of {', '.join(MATCHERS)}")
    if num_threads < 1 or max_image_size < 16 or max_num_features < 16:
        raise ManyviewError(f"num_threads must be >= 1, max_image_size and max_num_features >= 16; got "
                            f"{num_threads}, {max_image_size}, {max_num_features}")
    paths = None if isinstance(images, Views) else _resolve_paths(images)
    count = len(images) if paths is None else len(paths)
    if count < 2:
        where = images if isinstance(images, (str, os.PathLike)) else None
        raise ManyviewError(f"SfM needs at least 2 images, got {count}", where)

    bar = progress_bar(total=3 + (undistorted_dir is not None), desc="SfM: features", enabled=progress)
    try:
        with colmap_log(), tempfile.TemporaryDirectory(prefix="manyview-sfm-") as tmp_name:
            tmp = Path(tmp_name)
            inp = _prepare_views(images, tmp / "images") if paths is None else _prepare_files(paths, tmp)
            odd = [i for i, size in enumerate(inp.sizes) if size != inp.sizes[0]]
            if single_camera and odd:  # COLMAP would silently skip the images that do not fit the one camera
                (h0, w0), (h, w) = inp.sizes[0], inp.sizes[odd[0]]
                raise ManyviewError(f"image is {w}x{h} but {inp.names[0]} is {w0}x{h0}: one shared camera needs "
                                    "equal sizes; pass single_camera=False", paths[odd[0]])
            db_path = tmp / "database.db"
            reader, extraction, matching, verification, mapping = colmap_options(
                pycolmap, num_threads, max_image_size, max_num_features, seed, camera_model)
            pycolmap.set_random_seed(seed)
            timings = {}

            t = time.perf_counter()
            mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
            pycolmap.extract_features(db_path, inp.image_root, image_names=inp.image_names, camera_mode=mode,
                                      reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
            timings["features"] = time.perf_counter() - t
            db = pycolmap.Database.open(db_path)
            try:
                db_images = {im.name: im for im in db.read_all_images()}
                db_cameras = {cam.camera_id: cam for cam in db.read_all_cameras()}
            finally:
                db.close()
            missing = [inp.names[i] for i, n in enumerate(inp.image_names) if n not in db_images]
            if len(missing) == len(inp.image_names):
                raise ManyviewError(f"COLMAP could not read any of the {len(missing)} images", inp.image_root)
            if missing:
                warnings.warn(f"COLMAP could not read {len(missing)} image(s) ({', '.join(missing[:5])}); "
                              "they are reported as unregistered", stacklevel=2)
            bar.update(1)

            bar.set_description("SfM: matching")
            t = time.perf_counter()
            if matcher == "exhaustive":
                pycolmap.match_exhaustive(db_path, matching_options=matching, verification_options=verification,
                                          device=pycolmap.Device.cpu)
            else:
                pairing = pycolmap.SequentialPairingOptions()
                pairing.num_threads = num_threads
                pycolmap.match_sequential(db_path, matching_options=matching, pairing_options=pairing,
                                          verification_options=verification, device=pycolmap.Device.cpu)
            timings["matching"] = time.perf_counter() - t
            bar.update(1)

            bar.set_description("SfM: mapping")
            t = time.perf_counter()
            added = [0]

            def on_next_image():
                added[0] += 1
                bar.set_postfix(images=added[0], refresh=False)

            models = pycolmap.incremental_mapping(db_path, inp.image_root, tmp / "sparse", mapping,
                                                  next_image_callback=on_next_image)
            timings["mapping"] = time.perf_counter() - t
            bar.update(1)
            rec, num_models = _largest(models)

            cameras, registered, points, errors, tracks, params = _collect(rec, db_cameras, db_images, inp, dtype)
            features, verified_pairs = _match_statistics(db_path, db_images, inp)
            mean_error = (float(rec.compute_mean_reprojection_error())
                          if rec is not None and rec.num_reg_images() > 0 else float("nan"))
            if undistorted_dir is not None and rec is not None and rec.num_reg_images() > 0:
                bar.set_description("SfM: undistortion")
                t = time.perf_counter()
                model_dir = tmp / "kept_model"
                model_dir.mkdir()
                rec.write_binary(str(model_dir))
                undistort_model(model_dir, inp.image_root, undistorted_dir, num_threads)
                timings["undistortion"] = time.perf_counter() - t
                bar.update(1)
            if work_dir is not None:
                _keep(Path(work_dir), db_path, rec, inp)
    finally:
        bar.close()

    return SfmResult(cameras=cameras, registered=registered, points=points, point_errors=errors,
                     track_lengths=tracks, names=inp.names, mean_reprojection_error=mean_error,
                     num_models=num_models, wall_time=time.perf_counter() - start, timings=timings,
                     camera_model=camera_model, work_dir=None if work_dir is None else str(work_dir),
                     camera_params=params, features=features, verified_pairs=verified_pairs,
                     model_names=list(inp.image_names),
                     undistorted_dir=(str(undistorted_dir) if undistorted_dir is not None and num_models > 0
                                      and bool(registered.any()) else None))
