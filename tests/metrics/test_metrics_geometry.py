"""Reconstruction metrics on hand-computed point sets."""

import math

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.alignment import apply_sim3
from manyview.geometry.rotation import random_rotation
from manyview.metrics.geometry import nearest_neighbors, reconstruction_metrics
from manyview.scene import PointCloud


def test_hand_computed_distances():
    gt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = torch.tensor([[0.0, 0.0, 0.1]])
    m = reconstruction_metrics(pred, gt, fscore_threshold=0.5)
    far = math.sqrt(1 + 0.01)
    assert m["accuracy"] == pytest.approx(0.1) and m["accuracy_median"] == pytest.approx(0.1)
    assert m["completeness"] == pytest.approx((0.1 + far) / 2)
    assert m["completeness_median"] == pytest.approx((0.1 + far) / 2)
    assert m["chamfer"] == pytest.approx((0.1 + (0.1 + far) / 2) / 2)
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["fscore"] == pytest.approx(2 / 3)
    assert "normal_consistency" not in m


def test_identical_clouds_and_normals():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(200, 3, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    pc = PointCloud(xyz, normals=normals)
    m = reconstruction_metrics(pc, PointCloud(xyz, normals=-normals))  # flipped normals count as consistent
    assert m["accuracy"] == 0 and m["completeness"] == 0 and m["chamfer"] == 0
    assert m["normal_consistency"] == pytest.approx(1.0)


def test_normal_consistency_hand_value():
    xyz = torch.tensor([[0.0, 0.0, 0.0]])
    pred = PointCloud(xyz, normals=torch.tensor([[0.0, 1.0, 1.0]]))  # normalised inside: 45° from gt
    gt = PointCloud(xyz, normals=torch.tensor([[0.0, 0.0, 1.0]]))
    m = reconstruction_metrics(pred, gt)
    assert m["nc_accuracy"] == pytest.approx(math.sqrt(0.5))
    assert m["normal_consistency"] == pytest.approx(math.sqrt(0.5))


def test_sim3_alignment_before_measuring():
    g = torch.Generator().manual_seed(1)
    gt_xyz = torch.randn(300, 3, generator=g, dtype=torch.float64)
    gt_n = torch.nn.functional.normalize(torch.randn(300, 3, generator=g, dtype=torch.float64), dim=-1)
    R = random_rotation(1, g)[0]
    t = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    pred_xyz = apply_sim3(gt_xyz, torch.tensor(3.0, dtype=torch.float64), R, t)
    pred = PointCloud(pred_xyz, normals=gt_n @ R.T)
    gt = PointCloud(gt_xyz, normals=gt_n)
    unaligned = reconstruction_metrics(pred, gt)
    assert unaligned["accuracy"] > 0.5
    m = reconstruction_metrics(pred, gt, align_pairs=(pred_xyz, gt_xyz))
    assert m["accuracy"] < 1e-9 and m["completeness"] < 1e-9
    assert m["align_scale"] == pytest.approx(1 / 3)
    assert m["normal_consistency"] == pytest.approx(1.0)
    # Weighted alignment ignores corrupted correspondences with zero weight.
    corrupted = gt_xyz.clone()
    corrupted[:30] += 1.0
    w = torch.ones(300, dtype=torch.float64)
    w[:30] = 0
    m_w = reconstruction_metrics(pred, gt, align_pairs=(pred_xyz, corrupted, w))
    assert m_w["accuracy"] < 1e-9


def test_nearest_neighbors_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    q, r = torch.rand(50, 3, generator=g), torch.rand(80, 3, generator=g)
    d, i = nearest_neighbors(q, r)
    brute = torch.cdist(q.double(), r.double())
    assert np.allclose(d, brute.min(1).values.numpy()) and np.array_equal(i, brute.argmin(1).numpy())


def test_geometry_metric_errors():
    with pytest.raises(ManyviewError):
        reconstruction_metrics(torch.zeros(0, 3), torch.rand(4, 3))
    with pytest.raises(ManyviewError):
        reconstruction_metrics(torch.rand(4, 3), torch.rand(4, 3), align_pairs=(torch.rand(4, 3), torch.rand(5, 3)))
