"""Pose metrics on hand-computed cases (PoseDiffusion / Fast3R protocol)."""

import math

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.rotation import axis_angle_to_matrix, random_rotation
from manyview.geometry.transforms import rigid
from manyview.metrics.pose import (
    absolute_trajectory_error,
    accuracy_at,
    mean_average_accuracy,
    pose_metrics,
    relative_pose_errors,
)
from manyview.scene import Cameras

F = torch.tensor([50.0, 50.0, 32.0, 24.0], dtype=torch.float64)


def _cams(R, centres):
    n = len(centres)
    return Cameras(F.expand(n, 4), rigid(R, centres), torch.tensor([48, 64]))


def _ring():
    """Camera 0 at the origin (identity); the others in its xy-plane, arbitrary orientations."""
    centres = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [-1.0, 1, 0]], dtype=torch.float64)
    R = torch.cat([torch.eye(3, dtype=torch.float64)[None], random_rotation(3, torch.Generator().manual_seed(0))])
    return R, centres


def test_identical_cameras_have_zero_error():
    R, c = _ring()
    cams = _cams(R, c)
    rot, trans = relative_pose_errors(cams, cams)
    assert rot.shape == (6,) and trans.shape == (6,)
    assert rot.abs().max() < 1e-6 and trans.abs().max() < 1e-6
    m = pose_metrics(cams, cams)
    assert m["RRA@5"] == 100.0 and m["RTA@5"] == 100.0 and m["RRA@15"] == 100.0
    assert m["mAA@30"] == 100.0 and m["ATE"] == pytest.approx(0.0, abs=1e-9)


def test_ten_and_a_half_degree_perturbation_of_one_camera():
    R, c = _ring()
    gt = _cams(R, c)
    angle = math.radians(10.5)
    R_pred = R.clone()
    R_pred[0] = R[0] @ axis_angle_to_matrix(torch.tensor([0.0, 0.0, angle], dtype=torch.float64))
    pred = _cams(R_pred, c)
    rot, trans = relative_pose_errors(pred, gt)
    # Pairs (0, j) come first in combinations order: camera 0 turned by 10.5° about its optical axis, and the
    # directions to the other cameras, all in its xy-plane, turn by the same angle.
    assert torch.allclose(rot, torch.tensor([10.5] * 3 + [0.0] * 3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(trans, torch.tensor([10.5] * 3 + [0.0] * 3, dtype=torch.float64), atol=1e-6)
    m = pose_metrics(pred, gt)
    assert m["RRA@5"] == 50.0 and m["RTA@5"] == 50.0 and m["RRA@15"] == 100.0 and m["RTA@15"] == 100.0
    # Half the pairs in bin 0, half in bin [10, 11): accuracy 0.5 at thresholds 1..10, 1.0 at 11..30.
    assert m["mAA@30"] == pytest.approx(100 * (10 * 0.5 + 20 * 1.0) / 30)
    # Fast3R's torch.histc: 31 bins of width 30/31; 10.5 falls in bin 10.
    assert mean_average_accuracy(rot, trans, histogram="histc") == pytest.approx((10 * 0.5 + 21 * 1.0) / 31)
    assert m["ATE"] == pytest.approx(0.0, abs=1e-9)  # centres untouched


def test_translation_error_ignores_sign_and_flags_zero_baseline():
    R = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    c = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]], dtype=torch.float64)
    gt = _cams(R, c)
    mirrored = _cams(R, -c)
    _, trans = relative_pose_errors(mirrored, gt)
    assert trans.abs().max() < 1e-6  # opposite directions count as the same (PoseDiffusion's |cos|)
    tilted = _cams(R, torch.tensor([[0.0, 0, 0], [1.0, 1, 0], [0.0, 1, 0]], dtype=torch.float64))
    _, trans = relative_pose_errors(tilted, gt)
    assert trans[0] == pytest.approx(45.0)  # pair (0, 1): (1,1,0) vs (1,0,0)
    assert trans[2] == pytest.approx(45.0)  # pair (1, 2): (-1,0,0) vs (-1,1,0)
    collapsed = _cams(R, torch.zeros(3, 3, dtype=torch.float64))
    _, trans = relative_pose_errors(collapsed, gt)
    assert torch.equal(trans, torch.full((3,), 90.0, dtype=torch.float64))


def test_mean_average_accuracy_hand_histogram():
    rot = torch.tensor([0.5, 2.5, 12.0, 40.0])
    trans = torch.tensor([0.2, 3.5, 1.0, 0.0])
    # max errors 0.5, 3.5, 12, 40 -> unit bins 0, 3, 12 and one beyond 30.
    assert mean_average_accuracy(rot, trans) == pytest.approx((3 * 0.25 + 9 * 0.5 + 18 * 0.75) / 30)
    assert mean_average_accuracy(rot, trans, histogram="histc") == pytest.approx((3 * 0.25 + 9 * 0.5 + 19 * 0.75) / 31)
    assert mean_average_accuracy(torch.tensor([30.0]), torch.tensor([0.0])) == pytest.approx(1 / 30)  # closed last bin
    with pytest.raises(ManyviewError):
        mean_average_accuracy(rot, trans, histogram="numpy")


def test_mean_average_accuracy_matches_numpy_definition():
    g = torch.Generator().manual_seed(1)
    rot = 40 * torch.rand(500, generator=g, dtype=torch.float64)
    trans = 40 * torch.rand(500, generator=g, dtype=torch.float64)
    err = np.maximum(rot.numpy(), trans.numpy())
    hist, _ = np.histogram(err, bins=np.arange(31))
    assert mean_average_accuracy(rot, trans) == pytest.approx(np.mean(np.cumsum(hist / len(err))), abs=1e-12)
    # Equivalently, the mean accuracy at thresholds 1..30 (strict below 30, closed at 30).
    acc = [np.mean(err < t) for t in range(1, 30)] + [np.mean(err <= 30)]
    assert mean_average_accuracy(rot, trans) == pytest.approx(np.mean(acc), abs=1e-12)


def test_accuracy_at_is_strict():
    assert accuracy_at(torch.tensor([4.9, 5.0, 5.1, 0.0]), 5.0) == 0.5


def test_ate_after_similarity_alignment():
    R, c = _ring()
    gt = _cams(R, c)
    R_world = random_rotation(1, torch.Generator().manual_seed(2))[0]
    T = rigid(R_world, torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64))
    pred = gt.transform(T, 0.25)  # the same trajectory in another frame and scale
    assert absolute_trajectory_error(pred, gt) == pytest.approx(0.0, abs=1e-9)
    assert absolute_trajectory_error(pred, gt, with_scale=False) > 0.1
    # One centre displaced: an RMSE that stays below the raw displacement after the best alignment.
    moved = _cams(R, c + torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0.4]], dtype=torch.float64))
    ate = absolute_trajectory_error(moved, gt)
    assert 0 < ate < 0.4 / 2  # RMSE of a single 0.4 offset over 4 cameras is 0.2 before alignment


def test_pose_metric_errors():
    R, c = _ring()
    cams = _cams(R, c)
    with pytest.raises(ManyviewError):
        relative_pose_errors(cams[:3], cams)
    with pytest.raises(ManyviewError):
        relative_pose_errors(cams[:1], cams[:1])
    assert math.isnan(pose_metrics(cams[:2], cams[:2])["ATE"])
