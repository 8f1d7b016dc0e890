"""Dense correspondence recall (manyview.metrics.correspondence): hand-made perfect features recall every visible
cell, random features recall what chance predicts, angles are binned as they should be."""

from __future__ import annotations

import math

import pytest
import torch

from manyview.geometry.projection import depth_to_pointmap, project, unproject
from manyview.geometry.rotation import axis_angle_to_matrix
from manyview.geometry.transforms import invert_rigid
from manyview.metrics.correspondence import (
    CorrespondenceRecall,
    cell_centres,
    correspondence_errors,
    multiview_recall,
    relative_rotation_deg,
)


@pytest.fixture(scope="module")
def scene():
    from manyview.synth import generate

    _, views = generate(3, "object", num_views=3, height=48, width=64, arc_deg=90)
    cams = views.cameras
    return views.depths.float(), cams.fxfycxcy.float(), cams.c2w.float()


def fourier_features(depths, fxfycxcy, c2w, dim=64, seed=0):
    """Per-pixel features that are a smooth, injective function of the world point seen there (random Fourier
    features of its coordinates): matching them is matching the 3D points themselves."""
    pts = depth_to_pointmap(depths, fxfycxcy, c2w)
    omega = torch.randn(3, dim, generator=torch.Generator().manual_seed(seed)) * 2.0
    angle = pts @ omega
    return torch.cat((angle.sin(), angle.cos()), dim=-1).permute(0, 3, 1, 2)


def test_features_of_the_3d_point_itself_recall_every_visible_cell(scene):
    depths, K, c2w = scene
    recall = multiview_recall(fourier_features(depths, K, c2w), depths, K, c2w)
    table = recall.table()
    assert table["all"]["pairs"] == 3 and table["all"]["matches"] > 1000
    assert table["all"]["recall@5"] == 1.0


def test_coarser_grids_are_measured_in_image_pixels(scene):
    """Resampled to a stride-4 grid, perfect features still match to within the cell size."""
    depths, K, c2w = scene
    errors = correspondence_errors(*[torch.nn.functional.avg_pool2d(f[None], 4)[0] for f in
                                     fourier_features(depths, K, c2w)[:2]], depths[0], depths[1], K[0], K[1], c2w[0],
                                   c2w[1])
    assert errors.numel() > 50
    assert (errors < 4 * math.sqrt(2)).double().mean() > 0.95


def test_random_features_recall_what_chance_predicts(scene):
    """With random features the match is uniform over B's cells, so the expected recall at t is the mean fraction
    of B's cells within t pixels of each true projection."""
    depths, K, c2w = scene
    feats = torch.randn(3, 32, 48, 64, generator=torch.Generator().manual_seed(1))
    errors = correspondence_errors(feats[0], feats[1], depths[0], depths[1], K[0], K[1], c2w[0], c2w[1])
    # the true projections of the counted cells, computed independently
    uv = cell_centres(48, 64, 48, 64)
    d = depths[0].reshape(-1)
    world = unproject(uv, d, K[0], c2w[0])
    uv_b, z = project(world, K[1], invert_rigid(c2w[1]))
    inside = (d > 0) & (z > 0) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] < 64) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] < 48)
    col, row = uv_b[:, 0].floor().long().clamp(0, 63), uv_b[:, 1].floor().long().clamp(0, 47)
    visible = inside & ((depths[1][row, col] - z).abs() <= 0.05 * z) & (depths[1][row, col] > 0)
    assert errors.numel() == int(visible.sum())
    dist = torch.cdist(uv_b[visible].double(), uv.double())
    for t in (5, 10, 20):
        chance = float((dist < t).double().mean())
        observed = float((errors < t).double().mean())
        assert abs(observed - chance) < 0.03 + 0.15 * chance, (t, observed, chance)
    assert float((errors < 5).double().mean()) < 0.1


def test_relative_rotation_and_angle_bins():
    def pose(axis, deg):
        T = torch.eye(4)
        T[:3, :3] = axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float32) * math.radians(deg))
        T[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
        return T

    assert relative_rotation_deg(pose([0, 0, 1], 10), pose([0, 0, 1], 55)) == pytest.approx(45, abs=1e-4)
    assert relative_rotation_deg(pose([1, 0, 0], 0), pose([1, 0, 0], 180)) == pytest.approx(180, abs=1e-3)
    r = CorrespondenceRecall()
    r.add(14.9, torch.tensor([1.0, 30.0]))
    r.add(15.0, torch.tensor([6.0]))
    r.add(180.0, torch.tensor([1.0, 1.0, 1.0, 50.0]))
    table = r.table()
    assert table["0-15"]["recall@5"] == 0.5 and table["0-15"]["pairs"] == 1
    assert table["15-30"]["recall@10"] == 1.0 and table["15-30"]["recall@5"] == 0.0
    assert table["60-180"]["recall@5"] == 0.75
    assert math.isnan(table["30-60"]["recall@5"]) and table["30-60"]["matches"] == 0
    assert table["all"]["matches"] == 7 and table["all"]["recall@5"] == pytest.approx(4 / 7)


def test_synthetic_recall_pools_every_pair_of_held_out_views():
    from manyview.features.evaluate import synthetic_recall

    seen = []

    def colours(images):
        seen.append(images.shape)
        return images - 0.5

    table = synthetic_recall(colours, num_scenes=1, kinds=("object",), num_views=3, size=32, grid_stride=2,
                             supersample=1).table()
    assert seen == [(3, 3, 32, 32)]
    assert table["all"]["pairs"] == 3 and table["all"]["matches"] > 100
    assert 0 < table["all"]["recall@20"] <= 1
