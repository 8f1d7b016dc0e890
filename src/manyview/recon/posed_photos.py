"""Photos -> posed photos that every later stage can use as they are: COLMAP's incremental SfM, or Fast3R's
cameras refined by bundle adjustment; and the reconstruction folder that every ``manyview reconstruct`` model
writes.

Both paths estimate lens distortion (SIMPLE_RADIAL by default) and return the photos undistorted with PINHOLE
cameras (pycolmap's undistorter), so splatting and novel-view synthesis get exact pinhole data. The returned
views are the registered (refined) photos only, in input order, at one common size: the first one's undistorted
size, other photos scaled to cover it and centre-cropped (their cameras follow), since training takes one size.
Fewer than ``min_registered`` usable photos is an error that says how many and why.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from manyview.errors import ManyviewError
from manyview.scene import Cameras, PointCloud, Views
from manyview.scene.resize import ImageTransform

PhotosLike = Views | Sequence[str | os.PathLike]
MAX_PAIR_ROTATION_DEG = 20.0  # refine: pairs whose matches disagree more with the initial cameras are dropped


@dataclass(frozen=True, eq=False)
class PosedPhotos:
    """Registered photos, undistorted, with PINHOLE cameras; their points; a JSON-ready summary."""

    views: Views  # (R, 3, H, W), names as given (file names, or Views.names)
    points: PointCloud
    summary: dict  # method, counts, the names of photos left out, camera model and parameters, times


# ------------------------------------------------------------------------------------------------ helpers
def _names_and_sizes(photos: PhotosLike) -> tuple[list[str], list[tuple[int, int]]]:
    if isinstance(photos, Views):
        names = list(photos.names) or [f"{i:05d}.png" for i in range(len(photos))]
        return names, [(photos.height, photos.width)] * len(photos)
    from manyview.io.images import read_image_size

    paths = [Path(p) for p in photos]
    return [p.name for p in paths], [tuple(read_image_size(p)) for p in paths]


def _check_count(photos: PhotosLike, minimum: int) -> None:
    n = len(photos)
    if n < minimum:
        raise ManyviewError(f"{n} photo{'s' if n != 1 else ''} given; a reconstruction needs at least {minimum}")


def load_undistorted(folder: Path, model_names: Sequence[str], names: Sequence[str]) -> tuple[Views, PointCloud]:
    """The undistorted dataset (``images/``, ``sparse/0``) as Views in input order, renamed to ``names``."""
    from manyview.io.colmap import read_colmap_dataset

    views, model = read_colmap_dataset(folder)
    rename = dict(zip(model_names, names))
    order = sorted(range(len(views)), key=lambda k: list(model_names).index(model.names[k]))
    views = views[order]
    views = replace(views, names=[rename[model.names[k]] for k in order])
    points = model.points if model.points is not None else PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    return views, points


def _camera_summary(model: str, params: list[list[float]], names: list[str], kept: list[bool]) -> dict:
    distinct = {tuple(round(v, 6) for v in p) for p, k in zip(params, kept) if k and p}
    if len(distinct) == 1:
        return {"camera_model": model, "camera_params": list(next(iter(distinct)))}
    return {"camera_model": model, "camera_params": {n: p for n, p, k in zip(names, params, kept) if k}}


# ------------------------------------------------------------------------------------------------ COLMAP
def colmap_poses(photos: PhotosLike, *, camera_model: str = "SIMPLE_RADIAL", matcher: str = "exhaustive",
                 max_image_size: int = 1600, seed: int = 0, min_registered: int = 3, num_threads: int = 2,
                 progress: bool = True) -> PosedPhotos:
    """COLMAP incremental SfM (:func:`manyview.recon.sfm.run_colmap_sfm`) with a distortion model, then the
    registered photos undistorted. One shared camera when all photos have one size, else one per photo."""
    from manyview.recon.sfm import require_registered, run_colmap_sfm

    _check_count(photos, min_registered)
    names, sizes = _names_and_sizes(photos)
    single = len(set(sizes)) == 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="manyview-colmap-") as tmp:
        undistorted = Path(tmp) / "undistorted"
        result = run_colmap_sfm(photos, undistorted_dir=undistorted, camera_model=camera_model,
                                single_camera=single, matcher=matcher, max_image_size=max_image_size, seed=seed,
                                num_threads=num_threads, progress=progress)
        where = Path(photos[0]).parent if not isinstance(photos, Views) else None
        require_registered(result, min_registered, where)
        views, points = load_undistorted(undistorted, result.model_names, result.names)
    registered = result.registered.tolist()
    summary = {
        "model": "colmap", "views": len(views), "names": list(views.names), "image_size": [views.height, views.width],
        "photos": len(names), "registered": result.num_registered, "unregistered": result.unregistered_names,
        **_camera_summary(camera_model, result.camera_params, result.names, registered),
        "shared_camera": single, "matcher": matcher, "undistorted": True,
        "mean_reprojection_error_px": round(result.mean_reprojection_error, 4), "points_kept": len(points),
        "verified_pairs": result.verified_pairs, "num_models": result.num_models,
        "features_median": int(result.features.median()) if result.features is not None else 0,
        "time_s": {**{k: round(v, 3) for k, v in result.timings.items()},
                   "total": round(time.perf_counter() - t0, 3)},
    }
    return PosedPhotos(views, points, summary)


# ------------------------------------------------------------------------------------------------ Fast3R + BA
def cameras_at_source_size(cameras: Cameras, transforms: Sequence[ImageTransform]) -> Cameras:
    """Cameras of resized-and-cropped images -> cameras of the images they were made from (the inverse of
    ``ImageTransform.apply``): the crop is undone, then the scale."""
    out = []
    for i, t in enumerate(transforms):
        top, left, _, _ = t.crop
        rh, rw = t.resized_size
        out.append(cameras[i:i + 1].cropped(-top, -left, rh, rw).resized(*t.original_size))
    return Cameras.cat(out)


def _network_input(photos: PhotosLike, size: int, patch_size: int) -> tuple[torch.Tensor, list[ImageTransform]]:
    from manyview.recon.reconstruct import reconstruction_policy

    policy = reconstruction_policy(size, None, patch_size)
    if isinstance(photos, Views):
        target = policy.target_size(photos.height, photos.width)
        transform = ImageTransform.fitting((photos.height, photos.width), target, "center")
        return transform.apply_images(photos.images), [transform] * len(photos)
    from manyview.io.images import load_images

    views, transforms = load_images([Path(p) for p in photos], policy)
    return views.images, transforms


def fast3r_poses(photos: PhotosLike, model, *, size: int, device: str = "cpu", dtype: str | None = None,
                 seed: int | None = None, min_conf_percentile: float = 10.0, progress: bool = True) -> PosedPhotos:
    """Fast3R alone: its cameras (one forward pass at ``size``) moved onto the photos at their own resolution
    (the first photo's size; others scaled to cover it and centre-cropped), and its point cloud. No distortion is
    estimated: the photos are used as they are."""
    from manyview.io.images import load_images
    from manyview.recon.reconstruct import reconstruct
    from manyview.scene import apply_to_cameras

    _check_count(photos, 1)
    names, _ = _names_and_sizes(photos)
    t0 = time.perf_counter()
    images, transforms = _network_input(photos, size, model.patch_size)
    rec = reconstruct(images, model, device=device, dtype=dtype, image_index_seed=seed,
                      min_conf_percentile=min_conf_percentile, progress=progress)
    source = cameras_at_source_size(rec.cameras.to("cpu", torch.float64), transforms)
    if isinstance(photos, Views):
        views = Views(photos.images, cameras=source.to(torch.float32), names=names)
    else:
        views, loaded = load_images([Path(p) for p in photos])
        views = Views(views.images, cameras=apply_to_cameras(source, loaded).to(torch.float32), names=names)
    summary = {
        "model": "fast3r", "views": len(views), "names": names, "image_size": [views.height, views.width],
        "photos": len(names), "registered": len(names), "unregistered": [],
        "network_image_size": list(images.shape[-2:]), "undistorted": False,
        "mean_confidence": rec.info["mean_confidence"], "points_kept": len(rec.points),
        "focal_fallback": rec.info.get("focal_fallback", False),
        "time_s": {**rec.info["timings_s"], "total": round(time.perf_counter() - t0, 3)},
    }
    return PosedPhotos(views, rec.points, summary)


def fast3r_refined_poses(photos: PhotosLike, model, *, size: int, camera_model: str = "SIMPLE_RADIAL",
                         device: str = "cpu", dtype: str | None = None, seed: int | None = None,
                         min_registered: int = 3, num_threads: int = 2, progress: bool = True) -> PosedPhotos:
    """Fast3R's cameras (one forward pass at ``size``) moved onto the full photos, refined by bundle adjustment
    (:func:`manyview.recon.refine.refine_poses`), then the refined photos undistorted."""
    from manyview.recon.reconstruct import reconstruct
    from manyview.recon.refine import refine_poses

    _check_count(photos, min_registered)
    names, _ = _names_and_sizes(photos)
    t0 = time.perf_counter()
    images, transforms = _network_input(photos, size, model.patch_size)
    rec = reconstruct(images, model, device=device, dtype=dtype, image_index_seed=seed, progress=progress)
    initial = cameras_at_source_size(rec.cameras.to("cpu", torch.float64), transforms)
    t_net = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="manyview-refine-") as tmp:
        undistorted = Path(tmp) / "undistorted"
        result = refine_poses(photos, initial, camera_model=camera_model, undistorted_dir=undistorted,
                              max_pair_rotation_deg=MAX_PAIR_ROTATION_DEG, num_threads=num_threads, seed=seed or 0,
                              progress=progress)
        if result.num_refined < min_registered:
            pairs = len(names) * (len(names) - 1) // 2
            advice = "(the bundled model is not a pose estimator; COLMAP needs no initial cameras)"
            if result.rejected_pairs > result.verified_pairs / 2:
                why = (f"{result.rejected_pairs} of the {result.verified_pairs} image pairs with verified matches "
                       f"disagree with Fast3R's cameras by more than {MAX_PAIR_ROTATION_DEG:g} degrees of rotation: "
                       f"its cameras are too far off to refine {advice}")
            elif result.verified_pairs < len(names) - 1:
                why = (f"too few matches: only {result.verified_pairs} of {pairs} image pairs share verified feature "
                       "matches")
            else:
                why = (f"{result.verified_pairs} of {pairs} image pairs match, but too few points triangulate "
                       f"consistently with Fast3R's camera positions: its cameras are too far off to refine {advice}")
            raise ManyviewError(f"bundle adjustment refined {result.num_refined} of {len(names)} photos, fewer than "
                                f"the {min_registered} a reconstruction needs: {why}")
        views, points = load_undistorted(undistorted, result.model_names, result.names)
    refined = result.refined.tolist()
    summary = {
        "model": "fast3r+ba", "views": len(views), "names": list(views.names),
        "image_size": [views.height, views.width], "photos": len(names), "registered": result.num_refined,
        "unregistered": result.unrefined_names, "network_image_size": list(images.shape[-2:]),
        **_camera_summary(camera_model, result.camera_params, result.names, refined), "undistorted": True,
        "mean_reprojection_error_px": round(result.mean_reprojection_error, 4), "points_kept": len(points),
        "verified_pairs": result.verified_pairs, "rejected_pairs": result.rejected_pairs,
        "time_s": {"fast3r": round(t_net, 3), **{k: round(v, 3) for k, v in result.timings.items()},
                   "total": round(time.perf_counter() - t0, 3)},
    }
    return PosedPhotos(views, points, summary)


# ------------------------------------------------------------------------------------------------ writing
def write_reconstruction(out: str | os.PathLike, views: Views, points: PointCloud, summary: dict) -> Path:
    """The folder every ``manyview reconstruct`` model writes, built under a temporary name: a manyview dataset
    (images/, sparse/0/, transforms.json, points.ply, manyview.json), scene.glb (points and frusta) and
    summary.json (``summary``, plus ``points_written``)."""
    from manyview.io.atomic import atomic_directory, atomic_open
    from manyview.io.dataset import write_dataset
    from manyview.io.gltf import write_glb

    out = Path(out)
    with atomic_directory(out) as tmp:
        write_dataset(tmp, views, points=points)
        write_glb(tmp / "scene.glb", points, views.cameras)
        with atomic_open(tmp / "summary.json", "w", encoding="utf-8") as fh:
            json.dump({**summary, "points_written": len(points)}, fh, indent=2)
            fh.write("\n")
    return out


__all__ = ["PosedPhotos", "cameras_at_source_size", "colmap_poses", "fast3r_poses", "fast3r_refined_poses",
           "load_undistorted", "write_reconstruction"]
