"""Initial Gaussians from a point cloud, the 3DGS way.

Each point becomes an isotropic Gaussian whose standard deviation is the root mean squared distance to its
three nearest neighbours (3DGS's ``distCUDA2``, here scipy's cKDTree), with opacity 0.1, identity rotation and
the point's colour as the SH DC term. Higher SH coefficients start at zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from manyview.scene import PointCloud
from manyview.splat.gaussians import Gaussians
from manyview.splat.sh import num_coefficients, rgb_to_sh

_MIN_DIST2 = 1e-7  # 3DGS clamps the squared neighbour distance here, so duplicate points get a tiny scale


def knn_mean_sq_dist(xyz: np.ndarray, k: int = 3) -> np.ndarray:
    """(P, 3) -> (P,) mean squared distance to the ``k`` nearest other points (clamped at 1e-7)."""
    from scipy.spatial import cKDTree

    n = xyz.shape[0]
    if n < 2:
        return np.full(n, 1.0, dtype=np.float64)  # no neighbour: unit scale, the optimiser will fix it
    k = min(k, n - 1)
    dist, _ = cKDTree(xyz).query(xyz, k=k + 1)  # the first neighbour is the point itself
    return np.maximum((dist[:, 1:] ** 2).mean(axis=1), _MIN_DIST2)


def from_points(points: PointCloud | Tensor, sh_degree: int = 3, opacity: float = 0.1) -> Gaussians:
    """Gaussians at the points of ``points`` (a PointCloud, or an (P, 3) tensor rendered grey), float32."""
    cloud = points if isinstance(points, PointCloud) else PointCloud(torch.as_tensor(points))
    xyz = cloud.xyz.detach().to("cpu", torch.float64)
    n = xyz.shape[0]
    dist2 = torch.from_numpy(knn_mean_sq_dist(xyz.numpy()))
    log_scales = (0.5 * dist2.log())[:, None].expand(n, 3)
    rgb = cloud.rgb.detach().to("cpu", torch.float64) if cloud.rgb is not None else torch.full((n, 3), 0.5)
    quats = torch.zeros(n, 4, dtype=torch.float64)
    quats[:, 0] = 1.0
    logit = math.log(opacity / (1.0 - opacity))
    g = Gaussians(
        means=xyz,
        log_scales=log_scales.contiguous(),
        quats=quats,
        opacity_logits=torch.full((n,), logit, dtype=torch.float64),
        sh_dc=rgb_to_sh(rgb)[:, None, :],
        sh_rest=torch.zeros(n, num_coefficients(sh_degree) - 1, 3, dtype=torch.float64),
    )
    return g.to(torch.float32)


def random_in_box(n: int, low: Tensor | tuple = (-1.0, -1.0, -1.0), high: Tensor | tuple = (1.0, 1.0, 1.0),
                  sh_degree: int = 3, opacity: float = 0.1, seed: int = 0) -> Gaussians:
    """``n`` Gaussians at uniform random points in the box [low, high] with random colours (3DGS's
    initialisation when no SfM points exist)."""
    gen = torch.Generator().manual_seed(seed)
    low_t, high_t = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
    xyz = low_t + (high_t - low_t) * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    rgb = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    return from_points(PointCloud(xyz, rgb), sh_degree=sh_degree, opacity=opacity)
