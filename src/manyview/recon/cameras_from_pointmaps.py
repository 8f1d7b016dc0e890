"""Cameras and a fused point cloud from Fast3R-style pointmaps (Fast3R ``estimate_camera_poses``).

Fast3R predicts, for each of N views, a global pointmap in the camera frame of view 0 and a confidence map.
Cameras follow post hoc:
1. focal: Weiszfeld on view 0's global pointmap over pixels with confidence >= the 10th percentile, principal
   point (W/2, H/2) (the official ``first_view_from_global_head``), shared by all views; or a per-view PnP focal
   sweep (the official ``individual``); or a focal the caller knows;
2. pose: RANSAC PnP (SQPNP, 100 iterations, 5 px, ``cv2.setRNGSeed(0)``) of every view's global pointmap against
   its pixel grid. The official mask is ``conf > 1``, always true for conf = 1 + exp(.), so it uses every pixel;
   ``pnp_conf_percentile`` restricts PnP to the most confident pixels instead (the paper's "top 15%" = 85).
   A failed view gets the identity pose, as in the official code, and ``success=False``.

Pixel convention. The official code puts pixel (i, j) at the integer coordinates (j, i) and the principal point
at (W/2, H/2) in those coordinates. manyview puts pixel (i, j) at its centre (j + 0.5, i + 0.5) (COLMAP). The
same rays therefore need cx = W/2 + 0.5, cy = H/2 + 0.5 in manyview's ``Cameras``: this module computes
with the official grid (offset 0) and shifts the principal point by +0.5 when it builds ``Cameras``, so that
``depth_to_pointmap(depth, cameras.fxfycxcy)`` (offset 0.5) reproduces the network's rays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.alignment import align_pointmaps_local_to_global, percentile_mask
from manyview.geometry.focal import estimate_focal_weiszfeld
from manyview.geometry.pnp import pnp_ransac, pnp_ransac_focal_sweep
from manyview.geometry.rays import pixel_grid
from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud
from manyview.scene.reconstruction import Reconstruction

FocalMode = Literal["first_view", "first_view_local", "per_view_sweep"]


@dataclass(frozen=True, eq=False)
class CameraEstimate:
    cameras: Cameras  # (N,) c2w in the view-0 frame, manyview pixel convention
    focal: Tensor  # (N,) pixels
    success: Tensor  # (N,) bool, False where PnP failed (pose set to identity)
    num_inliers: Tensor  # (N,) int64 RANSAC inliers


def _check_pointmaps(pts: Tensor, conf: Tensor, what: str) -> None:
    if pts.dim() != 4 or pts.shape[-1] != 3:
        raise ManyviewError(f"{what} pointmaps must be (N, H, W, 3), got {tuple(pts.shape)}")
    if tuple(conf.shape) != tuple(pts.shape[:-1]):
        raise ManyviewError(f"{what} confidences must be {tuple(pts.shape[:-1])}, got {tuple(conf.shape)}")


def estimate_cameras(
    global_pts: Tensor,
    conf: Tensor,
    *,
    focal: float | None = None,
    focal_mode: FocalMode = "first_view",
    focal_conf_percentile: float = 10.0,
    local_pts: Tensor | None = None,
    local_conf: Tensor | None = None,
    align_conf_percentile: float = 85.0,
    pnp_conf_percentile: float | None = None,
    iterations: int = 100,
    reprojection_error: float = 5.0,
    seed: int = 0,
) -> CameraEstimate:
    """Fast3R camera recovery from global pointmaps (N, H, W, 3) in view 0's frame and confidences (N, H, W).

    ``focal`` (official-grid pixels) skips focal estimation. ``focal_mode``:
    - ``first_view``: Weiszfeld on view 0's global pointmap (official default);
    - ``first_view_local``: Weiszfeld on view 0's local pointmap after its Sim(3) alignment onto the global one,
      masked by the local confidence (official ``first_view_from_local_head``; needs ``local_pts``, ``local_conf``);
    - ``per_view_sweep``: each view keeps the best of 100 PnP focals (official ``individual``).
    ``pnp_conf_percentile`` None uses every pixel with conf > 1 (official); a number keeps conf >= that percentile.
    """
    _check_pointmaps(global_pts, conf, "global")
    n, h, w, _ = global_pts.shape
    dtype = global_pts.dtype
    pp = torch.tensor([w / 2, h / 2], dtype=dtype)  # official grid (offset 0)

    if focal is not None:
        focals = torch.full((n,), float(focal), dtype=torch.float64)
    elif focal_mode == "first_view":
        f0 = estimate_focal_weiszfeld(global_pts[0], percentile_mask(conf[0], focal_conf_percentile), pp)
        focals = torch.full((n,), float(f0), dtype=torch.float64)
    elif focal_mode == "first_view_local":
        if local_pts is None or local_conf is None:
            raise ManyviewError("focal_mode 'first_view_local' needs local_pts and local_conf")
        _check_pointmaps(local_pts, local_conf, "local")
        aligned, *_ = align_pointmaps_local_to_global(local_pts[:1], global_pts[:1], conf[:1], align_conf_percentile)
        f0 = estimate_focal_weiszfeld(aligned[0], percentile_mask(local_conf[0], focal_conf_percentile), pp)
        focals = torch.full((n,), float(f0), dtype=torch.float64)
    elif focal_mode == "per_view_sweep":
        focals = torch.full((n,), float("nan"), dtype=torch.float64)
    else:
        raise ManyviewError(f"unknown focal_mode {focal_mode!r}")

    grid = pixel_grid(h, w, 0.0, torch.float64)  # (H, W, 2), the official integer grid
    if pnp_conf_percentile is None:
        masks = conf > 1.0
    else:
        masks = percentile_mask(conf, pnp_conf_percentile)
    pts64 = global_pts.detach().to("cpu", torch.float64)
    c2ws, success, inlier_counts = [], [], []
    for i in range(n):
        m = masks[i].cpu()
        if focal is None and focal_mode == "per_view_sweep":
            ok, c2w, f, inliers = pnp_ransac_focal_sweep(pts64[i][m], grid[m], pp, (h, w), 100, iterations,
                                                         reprojection_error, seed)
            focals[i] = f
        else:
            f = float(focals[i])
            K = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
            ok, c2w, inliers = pnp_ransac(pts64[i][m], grid[m], K, iterations, reprojection_error, seed)
        c2ws.append(c2w)
        success.append(ok)
        inlier_counts.append(len(inliers))

    f = focals.nan_to_num(nan=max(h, w) / (2 * np.tan(np.radians(30))))  # failed sweeps: DUSt3R's default focal
    fxfycxcy = torch.stack([f, f, torch.full_like(f, w / 2 + 0.5), torch.full_like(f, h / 2 + 0.5)], -1)
    cameras = Cameras(fxfycxcy.to(dtype), torch.stack(c2ws).to(dtype), torch.tensor([h, w]).expand(n, 2))
    return CameraEstimate(
        cameras=cameras.to(global_pts.device),
        focal=focals.to(dtype),
        success=torch.tensor(success),
        num_inliers=torch.tensor(inlier_counts, dtype=torch.int64),
    )


def recover_cameras(global_pts: Tensor, conf: Tensor, **kwargs) -> Cameras:
    """``estimate_cameras(...).cameras``: the cameras alone."""
    return estimate_cameras(global_pts, conf, **kwargs).cameras


def build_reconstruction(
    images: Tensor,
    global_pts: Tensor,
    conf: Tensor,
    local_pts: Tensor | None = None,
    local_conf: Tensor | None = None,
    min_conf_percentile: float = 10.0,
    align_conf_percentile: float = 85.0,
    names: list[str] | None = None,
    **camera_kwargs,
) -> Reconstruction:
    """A ``Reconstruction`` from one sample of Fast3R outputs.

    images: (N, 3, H, W) in [0, 1]; global_pts (N, H, W, 3) in view 0's frame; conf (N, H, W); optional local
    pointmaps (N, H, W, 3) in each view's own frame with ``local_conf``. With a local head its pointmaps are
    Sim(3)-aligned onto the global ones (pixels with global conf >= ``align_conf_percentile``; the official demo
    uses 85) and become the reconstruction's pointmaps, as in Fast3R's demo and reconstruction evaluation;
    otherwise the global pointmaps are used. The point cloud keeps, per view, the pixels whose confidence (of the
    head that produced the pointmap) is >= ``min_conf_percentile`` (the demo's per-view filter, default 10).
    ``camera_kwargs`` go to :func:`estimate_cameras`.
    """
    _check_pointmaps(global_pts, conf, "global")
    n, h, w, _ = global_pts.shape
    if images.shape != (n, 3, h, w):
        raise ManyviewError(f"images must be ({n}, 3, {h}, {w}) to match the pointmaps, got {tuple(images.shape)}")
    if (local_pts is None) != (local_conf is None):
        raise ManyviewError("local_pts and local_conf must be given together")
    estimate = estimate_cameras(global_pts, conf, local_pts=local_pts, local_conf=local_conf,
                                align_conf_percentile=align_conf_percentile, **camera_kwargs)
    info = {"method": "fast3r", "pnp_success": estimate.success.tolist(),
            "pnp_inliers": estimate.num_inliers.tolist(), "min_conf_percentile": min_conf_percentile}
    if local_pts is not None:
        _check_pointmaps(local_pts, local_conf, "local")
        pointmaps, scale, _, _ = align_pointmaps_local_to_global(local_pts, global_pts, conf, align_conf_percentile)
        point_conf = local_conf
        info.update(pointmaps="local_aligned", align_conf_percentile=align_conf_percentile,
                    local_to_global_scale=scale.tolist())
    else:
        pointmaps, point_conf = global_pts, conf
        info.update(pointmaps="global")
    keep = percentile_mask(point_conf, min_conf_percentile)  # (N, H, W)
    rgb = images.permute(0, 2, 3, 1)  # (N, H, W, 3)
    points = PointCloud(xyz=pointmaps[keep], rgb=rgb[keep].to(pointmaps.dtype), confidence=point_conf[keep])
    return Reconstruction(
        cameras=estimate.cameras,
        pointmaps=pointmaps,
        confidences=point_conf,
        points=points,
        images=images,
        names=list(names) if names else [],
        local_pointmaps=local_pts,
        local_confidences=local_conf,
        info=info,
    )
