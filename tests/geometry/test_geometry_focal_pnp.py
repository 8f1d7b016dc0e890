"""Weiszfeld focal estimation and RANSAC PnP on exact synthetic pointmaps."""

import math

import numpy as np
import pytest
import torch

from manyview.geometry.focal import estimate_focal_weiszfeld
from manyview.geometry.pnp import pnp_ransac, pnp_ransac_focal_sweep
from manyview.geometry.projection import depth_to_pointmap
from manyview.geometry.rays import pixel_grid
from manyview.geometry.rotation import axis_angle_to_matrix
from manyview.geometry.transforms import rigid

H, W = 24, 32


def _plane_depth(g, n):
    """Tilted planes: z = a + b x + c y over the image, all in front of the camera."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64), torch.linspace(-1, 1, W, dtype=torch.float64),
                          indexing="ij")
    coef = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return 2 + coef[:, :1, None] + 0.4 * coef[:, 1:2, None] * u + 0.4 * coef[:, 2:3, None] * v


def _reference_weiszfeld(pointmap, mask, pp, iterations):
    """The single-map algorithm written out point by point (DUSt3R's masked variant)."""
    pts = pointmap[mask]
    grid = pixel_grid(pointmap.shape[0], pointmap.shape[1], 0.0, pointmap.dtype)[mask] - pp
    xy = pts[:, :2] / pts[:, 2:]
    a, b = (xy * grid).sum(-1), (xy * xy).sum(-1)
    f = a.mean() / b.mean()
    for _ in range(iterations):
        w = 1 / (grid - f * xy).norm(dim=-1).clamp_min(1e-8)
        f = (w * a).sum() / (w * b).sum()
    return f


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_weiszfeld_recovers_exact_focal(offset):
    g = torch.Generator().manual_seed(0)
    focals = torch.tensor([40.0, 75.5], dtype=torch.float64)
    pp = torch.tensor([W / 2, H / 2], dtype=torch.float64)
    fxfycxcy = torch.stack([focals, focals, pp[0].expand(2), pp[1].expand(2)], -1)
    pointmap = depth_to_pointmap(_plane_depth(g, 2), fxfycxcy, offset=offset)
    est = estimate_focal_weiszfeld(pointmap, offset=offset)
    assert torch.allclose(est, focals, rtol=1e-10)
    assert torch.allclose(estimate_focal_weiszfeld(pointmap.float(), offset=offset), focals.float(), rtol=1e-5)


def test_weiszfeld_batched_matches_reference_and_respects_mask():
    g = torch.Generator().manual_seed(1)
    f_true = 50.0
    fxfycxcy = torch.tensor([f_true, f_true, W / 2, H / 2], dtype=torch.float64)
    pointmap = depth_to_pointmap(_plane_depth(g, 3), fxfycxcy, offset=0.0)
    pointmap = pointmap + 0.01 * torch.randn(pointmap.shape, generator=g, dtype=torch.float64)
    bad = torch.rand(3, H, W, generator=g) < 0.1
    pointmap[bad] *= torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)  # outliers
    mask = torch.rand(3, H, W, generator=g) < 0.7
    pp = torch.tensor([W / 2, H / 2], dtype=torch.float64)
    for iterations in (0, 5, 100):
        est = estimate_focal_weiszfeld(pointmap, mask, iterations=iterations)
        ref = torch.stack([_reference_weiszfeld(pointmap[i], mask[i], pp, iterations) for i in range(3)])
        assert torch.allclose(est, ref, rtol=1e-12)
    # Masking the outliers out gives (nearly) the true focal; the L1 fit is more robust than the L2 start.
    clean = estimate_focal_weiszfeld(pointmap, ~bad)
    assert torch.allclose(clean, torch.full((3,), f_true, dtype=torch.float64), rtol=2e-3)
    l2 = estimate_focal_weiszfeld(pointmap, iterations=0)
    l1 = estimate_focal_weiszfeld(pointmap)
    assert ((l1 - f_true).abs() < (l2 - f_true).abs()).all()


def test_weiszfeld_principal_point_and_empty_mask():
    g = torch.Generator().manual_seed(2)
    fxfycxcy = torch.tensor([60.0, 60.0, 10.0, 14.0], dtype=torch.float64)
    pointmap = depth_to_pointmap(_plane_depth(g, 1)[0], fxfycxcy, offset=0.0)
    est = estimate_focal_weiszfeld(pointmap, principal_point=torch.tensor([10.0, 14.0], dtype=torch.float64))
    assert float(est) == pytest.approx(60.0, rel=1e-10)
    assert abs(float(estimate_focal_weiszfeld(pointmap)) - 60.0) > 0.1  # wrong pp, wrong focal
    empty = estimate_focal_weiszfeld(pointmap, torch.zeros(H, W, dtype=torch.bool))
    assert float(empty) == pytest.approx(max(H, W) / (2 * math.tan(math.radians(30))))


def _scene(seed, n=3, f=40.0, rough=False):
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    c2w = rigid(R, 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    fxfycxcy = torch.tensor([f, f, W / 2, H / 2], dtype=torch.float64)
    # Smooth planes, or (rough) depths of 1-5 per pixel, whose strong relief pins the focal down in PnP.
    depth = 1 + 4 * torch.rand(n, H, W, generator=g, dtype=torch.float64) if rough else _plane_depth(g, n)
    world = depth_to_pointmap(depth, fxfycxcy, c2w, offset=0.0)
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64)
    return world, c2w, K


def test_pnp_recovers_gt_poses():
    world, c2w, K = _scene(3)
    grid = pixel_grid(H, W, 0.0, torch.float64).reshape(-1, 2)
    for i in range(len(c2w)):
        ok, est, inliers = pnp_ransac(world[i].reshape(-1, 3), grid, K)
        assert ok
        assert est.dtype == torch.float64 and est.shape == (4, 4)
        assert torch.allclose(est, c2w[i], atol=1e-5)  # camera-to-world, not world-to-camera
        assert len(inliers) == H * W
    # Deterministic: the same seed gives the same answer bit for bit, also from numpy float32 inputs.
    pts32, uv32 = world[1].reshape(-1, 3).float().numpy(), grid.float().numpy()
    a = pnp_ransac(pts32, uv32, K.numpy(), seed=7)
    b = pnp_ransac(pts32, uv32, K.numpy(), seed=7)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_pnp_with_outliers_reports_inliers():
    world, c2w, K = _scene(4)
    g = torch.Generator().manual_seed(4)
    pts = world[0].reshape(-1, 3).clone()
    bad = torch.randperm(len(pts), generator=g)[:100]
    pts[bad] += 2 * torch.randn(100, 3, generator=g, dtype=torch.float64)
    # 2 px: on this 24x32 image the usual 5 px would accept an outlier that happens to land near its pixel.
    ok, est, inliers = pnp_ransac(pts, pixel_grid(H, W, 0.0, torch.float64).reshape(-1, 2), K, reprojection_error=2.0)
    assert ok and torch.allclose(est, c2w[0], atol=1e-5)
    assert not np.isin(bad.numpy(), inliers.numpy()).any()
    assert len(inliers) == H * W - 100


def test_pnp_failure_modes():
    K = torch.eye(3, dtype=torch.float64)
    ok, c2w, inliers = pnp_ransac(torch.rand(3, 3), torch.rand(3, 2), K)
    assert not ok and torch.equal(c2w, torch.eye(4, dtype=torch.float64)) and len(inliers) == 0
    with pytest.raises(ValueError):
        pnp_ransac(torch.rand(5, 3), torch.rand(4, 2), K)


def test_pnp_focal_sweep_finds_focal():
    s = max(H, W)
    f_true = float(np.geomspace(s / 2, 3 * s, 100)[37])
    world, c2w, _ = _scene(5, f=f_true, rough=True)
    grid = pixel_grid(H, W, 0.0, torch.float64).reshape(-1, 2)
    ok, est, focal, inliers = pnp_ransac_focal_sweep(world[2].reshape(-1, 3), grid, (W / 2, H / 2), (H, W),
                                                     reprojection_error=0.05)
    assert ok and focal == pytest.approx(f_true, rel=1e-12)
    assert torch.allclose(est, c2w[2], atol=1e-6) and len(inliers) == H * W
