"""Bundle adjustment from initial cameras (Fast3R's, or any): feature tracks across the views, checked against the
initial geometry, triangulated and bundle-adjusted with pycolmap. VGGT ships such a "+BA" path; Fast3R has none.

``refine_poses(images, cameras)`` runs:

1. SIFT extraction and exhaustive matching with RANSAC verification (pycolmap), the cameras in COLMAP's database
   set to the initial intrinsics, so that each pair's relative pose is estimated with them;
2. the check against the initial geometry: a pair whose verified relative rotation differs from the initial
   cameras' by more than ``max_pair_rotation_deg`` is dropped (repeated texture, symmetric objects);
3. ``rounds`` rounds of triangulation with the poses held (COLMAP's point triangulator) and a bundle adjustment
   of poses, focal length, distortion and points (Cauchy loss). The first round accepts reprojection errors as
   large as the initial poses make them (``initial_max_error`` of the image diagonal); later rounds use COLMAP's
   own thresholds, so the final points are what COLMAP's mapper would keep. As COLMAP's mapper does, points seen
   under less than ``MIN_TRIANGULATION_ANGLE_DEG`` between their rays are dropped before each adjustment and after
   the last one (with those over the reprojection threshold): their depth is unconstrained, and on a walkthrough
   they land thousands of scene units away.

Choices, and why:
- The refined cameras keep the initial frame up to the drift bundle adjustment allows; views that end with fewer
  than ``min_observations`` points (too few matches to trust) are not refined: they keep their initial pose,
  carried into the refined frame by the similarity between the refined views' initial and refined poses (its
  rotation the mean of their rotation changes, its scale and shift fitted to their centres), and ``refined`` is
  False for them. With fewer than three refined views nothing is changed.
- One camera is shared by all views when their sizes agree (``single_camera=None``), with the mean initial focal
  length: a network's per-view focal estimates scatter, a capture's lens does not. ``camera_model`` is the
  distortion model estimated (SIMPLE_RADIAL by default); ``undistorted_dir`` writes the refined views undistorted
  with PINHOLE cameras (:func:`manyview.recon.sfm.undistort_model`).
- The initial principal point is kept (COLMAP does not refine it; networks place it at the image centre).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.colmap import pose_matrix
from manyview.progress import progress as progress_bar
from manyview.recon.sfm import ColmapInput, colmap_log, colmap_options, prepare_input, undistort_model
from manyview.scene import Cameras, PointCloud, Views

# Models whose parameters start with the focal length(s) and principal point, followed by distortion.
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
# Two-view geometries that come with a relative pose (cam2_from_cam1) to compare with the initial cameras.
_POSED_CONFIGURATIONS = ("CALIBRATED", "PLANAR", "PANORAMIC", "PLANAR_OR_PANORAMIC")
_EXTRA_PARAMS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 0, "SIMPLE_RADIAL": 1, "RADIAL": 2, "OPENCV": 4}
MIN_TRIANGULATION_ANGLE_DEG = 1.5  # COLMAP mapper's filter_min_tri_angle


@dataclass(frozen=True, eq=False)
class RefineResult:
    """Refined cameras in the input's view order, and what the refinement saw."""

    cameras: Cameras  # (N,) pinhole part at the input images' sizes (exact for the undistorted images)
    refined: Tensor  # (N,) bool: views bundle-adjusted with at least min_observations points
    initial: Cameras  # (N,) the cameras given
    points: PointCloud  # (P,) triangulated points in the refined frame, rgb in [0, 1]
    point_errors: Tensor  # (P,) mean reprojection error of each point, px
    track_lengths: Tensor  # (P,) int64
    observations: Tensor  # (N,) int64 triangulated points each view observes
    names: list[str]
    model_names: list[str]  # each view's name in the COLMAP model (and under undistorted_dir/images)
    mean_reprojection_error: float  # px; NaN when nothing was triangulated
    verified_pairs: int  # image pairs with verified matches
    rejected_pairs: int  # of those, dropped for disagreeing with the initial rotations
    camera_model: str
    camera_params: list[list[float]]  # (N,) COLMAP's params of camera_model per view
    wall_time: float
    timings: dict[str, float] = field(default_factory=dict)
    undistorted_dir: str | None = None

    @property
    def num_refined(self) -> int:
        return int(self.refined.sum())

    @property
    def unrefined_names(self) -> list[str]:
        return [n for n, ok in zip(self.names, self.refined.tolist()) if not ok]


def _colmap_camera(pycolmap, model: str, camera_id: int, size: Sequence[int], f: np.ndarray):
    """A pycolmap camera of ``model`` with pinhole part ``f`` = (fx, fy, cx, cy) and zero distortion."""
    fx, fy, cx, cy = (float(v) for v in f)
    pinhole = [(fx + fy) / 2, cx, cy] if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else [fx, fy, cx, cy]
    camera = pycolmap.Camera(model=model, width=int(size[1]), height=int(size[0]),
                             params=pinhole + [0.0] * _EXTRA_PARAMS[model], camera_id=int(camera_id))
    camera.has_prior_focal_length = True
    return camera


def _rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _check(cameras: Cameras, inp: ColmapInput) -> None:
    n = len(inp.names)
    if len(cameras.shape) != 1 or len(cameras) != n:
        raise ManyviewError(f"{n} images but {len(cameras) if len(cameras.shape) else 1} initial cameras")
    if not (torch.isfinite(cameras.c2w).all() and torch.isfinite(cameras.fxfycxcy).all()):
        raise ManyviewError("the initial cameras have non-finite poses or intrinsics")
    if not bool((cameras.fxfycxcy[:, :2] > 0).all()):
        raise ManyviewError("the initial cameras need positive focal lengths")
    for i, size in enumerate(cameras.image_size.tolist()):
        if tuple(size) != tuple(inp.sizes[i]):
            (h, w), (ch, cw) = inp.sizes[i], size
            raise ManyviewError(f"image {inp.names[i]} is {w}x{h} but its initial camera is {cw}x{ch}; give cameras "
                                "at the images' own sizes (Cameras.resized / ImageTransform)")


def _gate_pairs(pycolmap, db_path: Path, index: dict[int, int], w2c: np.ndarray, max_deg: float) -> tuple[int, int]:
    """Drop verified pairs whose relative rotation disagrees with the initial cameras'; (verified, dropped)."""
    posed = {getattr(pycolmap.TwoViewGeometryConfiguration, name) for name in _POSED_CONFIGURATIONS}
    db = pycolmap.Database.open(db_path)
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        verified = dropped = 0
        for pair_id, geometry in zip(pair_ids, geometries):
            if len(geometry.inlier_matches) == 0:
                continue
            verified += 1
            if geometry.config not in posed:  # no relative pose estimated for this pair: nothing to compare
                continue
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            i, j = index[a], index[b]
            initial = w2c[j, :3, :3] @ w2c[i, :3, :3].T  # cam_j from cam_i
            measured = geometry.cam2_from_cam1.rotation.matrix()
            if _rotation_angle_deg(initial, measured) > max_deg:
                db.delete_inlier_matches(a, b)
                dropped += 1
    finally:
        db.close()
    return verified, dropped


def _thresholds(options, max_error_px: float, max_angle_deg: float) -> None:
    tri = options.triangulation
    tri.complete_max_reproj_error = tri.merge_max_reproj_error = max_error_px
    tri.create_max_angle_error = tri.continue_max_angle_error = max_angle_deg
    options.mapper.filter_max_reproj_error = max_error_px


def _drop_weak_points(rec, min_angle_deg: float, max_error_px: float | None = None) -> int:
    """Delete points whose rays meet at less than ``min_angle_deg`` (the widest angle over their track's camera
    centres) or, with ``max_error_px``, whose mean reprojection error exceeds it; returns how many went."""
    centres = {i: np.asarray(rec.images[i].projection_center()) for i in rec.reg_image_ids()}
    min_cos = math.cos(math.radians(min_angle_deg))
    weak = []
    for point_id, point in rec.points3D.items():
        if max_error_px is not None and point.has_error() and point.error > max_error_px:
            weak.append(point_id)
            continue
        rays = np.stack([centres[e.image_id] for e in point.track.elements]) - point.xyz
        rays /= np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12)
        if (rays @ rays.T).min() > min_cos:  # every pair of rays closer than the angle
            weak.append(point_id)
    for point_id in weak:
        rec.delete_point3D(point_id)
    return len(weak)


def _bundle_adjust(pycolmap, rec, image_ids: list[int], num_threads: int) -> None:
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_principal_point = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.solver_options.num_threads = num_threads
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in image_ids:
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    pycolmap.create_default_bundle_adjuster(options, config, rec).solve()
    rec.update_point_3d_errors()


def refine_poses(
    images: Views | str | os.PathLike | Sequence[str | os.PathLike],
    cameras: Cameras,
    *,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool | None = None,
    max_pair_rotation_deg: float = 20.0,
    min_observations: int = 15,
    rounds: int = 3,
    initial_max_error: float = 0.05,
    max_image_size: int = 1600,
    max_num_features: int = 8192,
    num_threads: int = 2,
    seed: int = 0,
    undistorted_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> RefineResult:
    """Bundle-adjust ``cameras`` (N,), given at the images' own sizes, on ``images`` (Views, a folder or image
    files, in the cameras' order). See the module docstring for the steps and what is returned.

    ``max_pair_rotation_deg``: the largest disagreement, in degrees, between a pair's verified relative rotation and
    the initial cameras' before the pair's matches are dropped. ``min_observations``: points a view needs to count
    as refined. ``rounds``: triangulation + bundle adjustment rounds (the first with ``initial_max_error`` x the
    image diagonal as its reprojection threshold). ``undistorted_dir``: write the refined views undistorted, with
    PINHOLE cameras (``images/``, ``sparse/0/``).
    """
    import pycolmap

    start = time.perf_counter()
    if camera_model not in CAMERA_MODELS:
        raise ManyviewError(f"camera_model {camera_model!r} is not supported for refinement; use one of "
                            f"{', '.join(CAMERA_MODELS)}")
    if rounds < 1 or min_observations < 1 or not 0 < max_pair_rotation_deg <= 180 or not 0 < initial_max_error < 1:
        raise ManyviewError(f"rounds and min_observations must be >= 1, max_pair_rotation_deg in (0, 180] and "
                            f"initial_max_error in (0, 1); got {rounds}, {min_observations}, {max_pair_rotation_deg}, "
                            f"{initial_max_error}")
    initial = cameras.to("cpu", torch.float64)
    bar = progress_bar(total=2 + rounds, desc="BA: features", enabled=progress)
    timings: dict[str, float] = {}
    try:
        with colmap_log(), tempfile.TemporaryDirectory(prefix="manyview-refine-") as tmp_name:
            tmp = Path(tmp_name)
            inp = prepare_input(images, tmp)
            n = len(inp.names)
            if n < 2:
                raise ManyviewError(f"bundle adjustment needs at least 2 images, got {n}")
            _check(initial, inp)
            shared = all(s == inp.sizes[0] for s in inp.sizes) if single_camera is None else single_camera
            if shared and any(s != inp.sizes[0] for s in inp.sizes):
                raise ManyviewError("single_camera=True but the images differ in size")
            f = initial.fxfycxcy.numpy()
            w2c = initial.w2c.numpy()
            if shared:  # one lens: the mean initial focal length, the first view's principal point
                f = np.concatenate([np.repeat(f[:, :2].mean(), 2)[None].repeat(n, 0), f[:1, 2:].repeat(n, 0)], 1)
            reader, extraction, matching, verification, triangulation = colmap_options(
                pycolmap, num_threads, max_image_size, max_num_features, seed, camera_model)
            verification.compute_relative_pose = True
            pycolmap.set_random_seed(seed)
            db_path = tmp / "database.db"

            t = time.perf_counter()
            mode = pycolmap.CameraMode.SINGLE if shared else pycolmap.CameraMode.PER_IMAGE
            pycolmap.extract_features(db_path, inp.image_root, image_names=inp.image_names, camera_mode=mode,
                                      reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
            db = pycolmap.Database.open(db_path)
            try:
                db_images = {im.name: im for im in db.read_all_images()}
                missing = [inp.names[i] for i, name in enumerate(inp.image_names) if name not in db_images]
                if missing:
                    raise ManyviewError(f"COLMAP could not read {len(missing)} image(s): {', '.join(missing[:5])}")
                for i, name in enumerate(inp.image_names):  # verification estimates relative poses with these
                    camera_id = db_images[name].camera_id
                    db.update_camera(_colmap_camera(pycolmap, camera_model, camera_id, inp.sizes[i], f[i]))
            finally:
                db.close()
            timings["features"] = time.perf_counter() - t
            bar.update(1)

            bar.set_description("BA: matching")
            t = time.perf_counter()
            pycolmap.match_exhaustive(db_path, matching_options=matching, verification_options=verification,
                                      device=pycolmap.Device.cpu)
            index = {db_images[name].image_id: i for i, name in enumerate(inp.image_names)}
            verified, dropped = _gate_pairs(pycolmap, db_path, index, w2c, max_pair_rotation_deg)
            timings["matching"] = time.perf_counter() - t
            bar.update(1)

            rec = pycolmap.Reconstruction()
            for i, name in enumerate(inp.image_names):
                image = db_images[name]
                if not rec.exists_camera(image.camera_id):
                    rec.add_camera_with_trivial_rig(_colmap_camera(pycolmap, camera_model, image.camera_id,
                                                                   inp.sizes[i], f[i]))
                pose = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[i, :3, :3]), w2c[i, :3, 3])
                rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=image.camera_id,
                                                                image_id=image.image_id), pose)
            diagonal = max(math.hypot(h, w) for h, w in inp.sizes)
            t = time.perf_counter()
            for r in range(rounds):
                bar.set_description(f"BA: round {r + 1}/{rounds}")
                if r == 0:  # as loose as the initial poses' errors
                    _thresholds(triangulation, max(4.0, initial_max_error * diagonal), 10.0)
                else:  # COLMAP's defaults
                    _thresholds(triangulation, 4.0, 2.0)
                rec = pycolmap.triangulate_points(rec, db_path, inp.image_root, tmp / "triangulated",
                                                  clear_points=True, options=triangulation)
                _drop_weak_points(rec, MIN_TRIANGULATION_ANGLE_DEG)
                counts = {i: rec.images[i].num_points3D for i in rec.reg_image_ids()}
                well_seen = [i for i, c in counts.items() if c >= min_observations]
                if len(well_seen) >= 3:
                    _bundle_adjust(pycolmap, rec, well_seen, num_threads)
                bar.update(1)
            _drop_weak_points(rec, MIN_TRIANGULATION_ANGLE_DEG, triangulation.mapper.filter_max_reproj_error)
            timings["bundle_adjustment"] = time.perf_counter() - t

            refined_cams, refined, obs, params = _collect(rec, inp, db_images, initial, min_observations, camera_model)
            pts = list(rec.points3D.values()) if refined.sum() >= 3 else []
            points = PointCloud(torch.tensor(np.array([p.xyz for p in pts]).reshape(-1, 3), dtype=dtype),
                                torch.tensor(np.array([p.color for p in pts]).reshape(-1, 3) / 255.0,
                                             dtype=torch.float32))
            errors = torch.tensor([p.error for p in pts], dtype=dtype)
            tracks = torch.tensor([p.track.length() for p in pts], dtype=torch.int64)
            mean_error = float(errors.double().mean()) if len(pts) else float("nan")
            written = None
            if undistorted_dir is not None and refined.sum() >= 3:
                bar.set_description("BA: undistortion")
                t = time.perf_counter()
                for i, name in enumerate(inp.image_names):  # only the refined views are worth undistorting
                    if not refined[i]:
                        rec.deregister_frame(rec.images[db_images[name].image_id].frame_id)
                model_dir = tmp / "refined_model"
                model_dir.mkdir()
                rec.write_binary(str(model_dir))
                undistort_model(model_dir, inp.image_root, undistorted_dir, num_threads)
                timings["undistortion"] = time.perf_counter() - t
                written = str(undistorted_dir)
    finally:
        bar.close()
    return RefineResult(cameras=refined_cams.to(dtype), refined=refined, initial=cameras, points=points,
                        point_errors=errors, track_lengths=tracks, observations=obs, names=list(inp.names),
                        model_names=list(inp.image_names), mean_reprojection_error=mean_error,
                        verified_pairs=verified, rejected_pairs=dropped, camera_model=camera_model,
                        camera_params=params, wall_time=time.perf_counter() - start, timings=timings,
                        undistorted_dir=written)


def _collect(rec, inp: ColmapInput, db_images: dict, initial: Cameras, min_observations: int, camera_model: str):
    """(cameras, refined, observations, params) in view order; unrefined views follow the refined frame."""
    n = len(inp.names)
    fxfycxcy = initial.fxfycxcy.numpy().copy()
    c2w = initial.c2w.numpy().copy()
    obs = np.zeros(n, dtype=np.int64)
    params: list[list[float]] = []
    for i, name in enumerate(inp.image_names):
        image = rec.images[db_images[name].image_id]
        camera = rec.cameras[image.camera_id]
        obs[i] = image.num_points3D
        params.append([float(v) for v in camera.params])
        fxfycxcy[i] = [camera.focal_length_x, camera.focal_length_y, camera.principal_point_x,
                       camera.principal_point_y]
        c2w[i] = np.linalg.inv(np.vstack([pose_matrix(image), [0.0, 0.0, 0.0, 1.0]]))
    refined = obs >= min_observations
    if refined.sum() < 3:  # too little to trust: nothing changes
        return initial, torch.zeros(n, dtype=torch.bool), torch.from_numpy(obs), params
    if not refined.all():  # carry the initial poses of the others into the refined frame
        R, scale, t = _similarity(initial.c2w.numpy()[refined], c2w[refined])
        for i in np.nonzero(~refined)[0]:
            c2w[i, :3, :3] = R @ initial.c2w[i, :3, :3].numpy()
            c2w[i, :3, 3] = scale * R @ initial.c2w[i, :3, 3].numpy() + t
    cameras = Cameras(torch.from_numpy(fxfycxcy), torch.from_numpy(c2w), initial.image_size.clone())
    return cameras, torch.from_numpy(refined), torch.from_numpy(obs), params


def _similarity(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(R, s, t) with after ~ s R before + t for camera-to-world poses (K, 4, 4): the rotation is the chordal mean
    of after_R before_R^T (well defined even when the centres are collinear, as along a walkthrough), then scale
    and translation by least squares on the centres."""
    u, _, vt = np.linalg.svd(np.einsum("kij,klj->il", after[:, :3, :3], before[:, :3, :3]))
    R = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    c0, c1 = before[:, :3, 3], after[:, :3, 3]
    m0, m1 = c0.mean(0), c1.mean(0)
    rotated = (c0 - m0) @ R.T
    spread = float((rotated ** 2).sum())
    scale = float(((c1 - m1) * rotated).sum() / spread) if spread > 0 else 1.0
    return R, scale, m1 - scale * R @ m0


__all__ = ["CAMERA_MODELS", "RefineResult", "refine_poses"]
