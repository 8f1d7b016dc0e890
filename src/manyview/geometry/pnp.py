"""Camera pose from 2D-3D correspondences: OpenCV RANSAC PnP, as DUSt3R's and Fast3R's ``fast_pnp`` uses it.

Return convention: ``c2w`` (4, 4) float64, camera-to-world in the frame of ``points3d`` (OpenCV axes), i.e.
the inverse of the [R | t] that ``cv2.solvePnPRansac`` returns. A failed solve returns ``success=False``, the
identity pose (Fast3R's fallback) and no inliers. ``cv2.setRNGSeed(seed)`` is called before every solve so
results are reproducible; inputs are passed to OpenCV as float64.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

SQPNP = cv2.SOLVEPNP_SQPNP


def _numpy64(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64))


def _failure() -> tuple[bool, Tensor, Tensor]:
    return False, torch.eye(4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)


def pnp_ransac(
    points3d,
    pixels,
    K,
    iterations: int = 100,
    reprojection_error: float = 5.0,
    seed: int = 0,
    flags: int = SQPNP,
) -> tuple[bool, Tensor, Tensor]:
    """RANSAC PnP without lens distortion.

    points3d: (P, 3) world points; pixels: (P, 2) their (u, v) in the pixel convention of ``K`` (3, 3).
    Returns (success, c2w (4, 4) float64, inlier indices (M,) int64).
    """
    pts, uv, K = _numpy64(points3d), _numpy64(pixels), _numpy64(K)
    if pts.ndim != 2 or pts.shape[1] != 3 or uv.shape != (pts.shape[0], 2) or K.shape != (3, 3):
        raise ValueError(f"expected points3d (P, 3), pixels (P, 2), K (3, 3); got {pts.shape}, {uv.shape}, {K.shape}")
    if pts.shape[0] < 4:  # PnP needs at least 4 correspondences
        return _failure()
    cv2.setRNGSeed(seed)
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            pts, uv, K, None, iterationsCount=iterations, reprojectionError=reprojection_error, flags=flags
        )
    except cv2.error:  # degenerate input (collinear points, too few inliers) makes some solvers throw
        return _failure()
    if not ok or inliers is None or len(inliers) == 0:
        return _failure()
    w2c = np.eye(4)
    w2c[:3, :3] = cv2.Rodrigues(rvec)[0]
    w2c[:3, 3] = tvec.ravel()
    c2w = np.eye(4)
    c2w[:3, :3] = w2c[:3, :3].T
    c2w[:3, 3] = -w2c[:3, :3].T @ w2c[:3, 3]
    return True, torch.from_numpy(c2w), torch.from_numpy(inliers.ravel().astype(np.int64))


def pnp_ransac_focal_sweep(
    points3d,
    pixels,
    principal_point,
    image_size: tuple[int, int],
    num_focals: int = 100,
    iterations: int = 100,
    reprojection_error: float = 5.0,
    seed: int = 0,
    flags: int = SQPNP,
) -> tuple[bool, Tensor, float, Tensor]:
    """PnP when the focal is unknown: try ``np.geomspace(S/2, 3S, num_focals)`` with S = max(H, W) and keep
    the focal with the most RANSAC inliers (the first one on ties), as DUSt3R's ``fast_pnp`` does.

    principal_point: (2,) (u, v); image_size: (H, W). Returns (success, c2w, focal, inlier indices);
    focal is nan on failure.
    """
    h, w = int(image_size[0]), int(image_size[1])
    cx, cy = (float(v) for v in _numpy64(principal_point).ravel())
    best: tuple[int, Tensor, float, Tensor] | None = None
    for f in np.geomspace(max(h, w) / 2, max(h, w) * 3, num=num_focals):
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        ok, c2w, inliers = pnp_ransac(points3d, pixels, K, iterations, reprojection_error, seed, flags)
        if ok and (best is None or len(inliers) > best[0]):
            best = (len(inliers), c2w, float(f), inliers)
    if best is None:
        ok, c2w, inliers = _failure()
        return ok, c2w, float("nan"), inliers
    return True, best[1], best[2], best[3]
