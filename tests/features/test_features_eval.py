"""Feature evaluation (manyview.features.evaluate): identical features find every match and random ones only chance,
an oracle feature of the true 3D position scores ~1 on a synthetic scene where random features do not, visibility
of SfM points hides the far side, and key points re-detected in the same view repeat and match."""

from __future__ import annotations

import math

import pytest
import torch

from manyview.features.evaluate import (KeypointStats, SyntheticFeatureEval, evaluate_synthetic, keypoint_pair,
                                        point_correspondence_errors, point_visibility, splatted_depth,
                                        surface_points)
from manyview.features.keypoints import keypoints2d
from manyview.geometry.projection import depth_to_pointmap
from manyview.metrics.correspondence import CorrespondenceRecall, cell_centres


def _look_down_z(n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[20.0, 20.0, 16.0, 16.0]]).repeat(n, 1), torch.eye(4)[None].repeat(n, 1, 1)


def test_identical_features_match_exactly_and_random_ones_at_chance():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(16, 8, 8, generator=g)
    size = (32, 32)
    uv = cell_centres(8, 8, *size)
    errors = point_correspondence_errors(feat, feat, uv, uv, size)
    assert errors.shape == (64,) and float(errors.max()) == 0.0
    recall = CorrespondenceRecall()
    recall.add(40.0, errors)
    assert recall.table()["30-60"]["recall@5"] == 1.0 and recall.table()["0-15"]["matches"] == 0
    # features of B unrelated to A's: the match is a uniformly random cell, so recall@t is the fraction of cells
    # within t px of the true one (cells 4 px apart: 9 or fewer of 64 within 5 px, ~1/7)
    chance = []
    for seed in range(20):
        other = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
        chance.append(point_correspondence_errors(feat, other, uv, uv, size))
    e = torch.cat(chance)
    expected = float(((uv[:, None] - uv[None]).norm(dim=-1) < 5).double().mean())
    assert abs(float((e < 5).double().mean()) - expected) < 0.03 and expected < 0.15


def test_splatted_depth_and_visibility_hide_the_far_side():
    K, c2w = _look_down_z()
    xs = torch.linspace(-1.2, 1.2, 25)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    wall = torch.stack((xx.reshape(-1), yy.reshape(-1), torch.full((625,), 2.0)), -1)
    behind = torch.tensor([[0.05, 0.05, 4.0]])
    points = torch.cat((wall, behind))
    depth = splatted_depth(points, K, c2w, (32, 32))
    assert depth.shape == (1, 32, 32) and torch.allclose(depth[0, 8:24, 8:24], torch.tensor(2.0), atol=0.02)
    seen, uv = point_visibility(points, K, c2w, (32, 32), (16, 16))
    centre = (uv[0, :625, 0] > 2) & (uv[0, :625, 0] < 30) & (uv[0, :625, 1] > 2) & (uv[0, :625, 1] < 30)
    assert seen[0, :625][centre].all() and not seen[0, 625]


def test_surface_points_lie_on_the_depth_maps():
    K, c2w = _look_down_z(2)
    c2w[1, 0, 3] = 10.0  # the views do not overlap: each point is one view's pixel
    depths = torch.full((2, 16, 16), 3.0)
    depths[1, :, :4] = 0
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pts, cols = surface_points(images, depths, K, c2w, 100, seed=0)
    assert pts.shape == (100, 3) and cols.shape == (100, 3)
    assert torch.allclose(pts[:, 2], torch.tensor(3.0))
    maps = torch.stack([depth_to_pointmap(depths[v], K[v], c2w[v]) for v in range(2)])
    for p, c in zip(pts[:5], cols[:5]):  # each point is a pixel of some view, with that pixel's colour
        hit = ((maps - p).norm(dim=-1) < 1e-4) & (depths > 0)
        v, r, col = hit.nonzero()[0]
        assert torch.allclose(images[v, :, r, col], c)


def test_keypoints_detected_twice_in_one_view_repeat_and_match():
    K, c2w = _look_down_z()
    feat = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    kp = keypoints2d(feat, (32, 32), 16)
    depth = torch.full((32, 32), 2.0)
    visible, rep, cor = keypoint_pair(kp, kp, depth, depth, K[0], K[0], c2w[0], c2w[0])
    assert visible == kp.xy.shape[0] > 0 and rep == [visible, visible] and cor == [visible, visible]
    # the best key point, and B's copy of it moved by 5 px: repeated within 8 px, not within 3
    one = type(kp)(*(x[:1] for x in kp))
    shifted = one._replace(xy=one.xy + torch.tensor([5.0, 0.0]))
    visible, rep, _ = keypoint_pair(one, shifted, depth, depth, K[0], K[0], c2w[0], c2w[0])
    assert rep == [0, visible]
    stats = KeypointStats()
    stats.add(45.0, visible, rep, [0, 0], visible)
    row = stats.table()["30-60"]
    assert row["repeatability@8"] == 1.0 and row["repeatability@3"] == 0.0 and math.isnan(
        stats.table()["0-15"]["repeatability@3"])


@pytest.mark.parametrize("which", ["oracle", "random"])
def test_an_oracle_feature_scores_near_one_and_random_features_do_not(which, monkeypatch):
    """Random Fourier features of each pixel's true world position are unique to the place: every visible cell
    finds its match. The whole synthetic path (scenes, depth, pairs, bins, key points) runs on a small setting."""
    import manyview.synth as synth

    freqs = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 2  # ~0.5 world units wide
    seen = {}

    def capture(*args, **kwargs):  # the depth of the scene being evaluated, for the oracle
        scene, views = generate(*args, **kwargs)
        seen["depths"] = views.depths.float()
        return scene, views

    def features(images, K, c2w, points, colors):
        V, _, H, W = images.shape
        if which == "random":
            return torch.randn(V, 32, H // 4, W // 4, generator=torch.Generator().manual_seed(1))
        quarter = K / 4  # the oracle on the stride-4 match grid, from the depth at each cell's centre pixel
        world = torch.stack([depth_to_pointmap(seen["depths"][v, 2::4, 2::4], quarter[v], c2w[v])
                             for v in range(V)])
        phase = world @ freqs
        return torch.cat((phase.sin(), phase.cos()), -1).permute(0, 3, 1, 2)

    generate = synth.generate
    monkeypatch.setattr(synth, "generate", capture)
    cfg = SyntheticFeatureEval(scenes=1, kinds=("object",), views=3, size=48, points=64, max_keypoints=16,
                               supersample=1)
    out = evaluate_synthetic({which: features}, cfg)[which]
    recall = out["recall"]["all"]
    assert recall["matches"] > 50 and recall["pairs"] == 3 and out["keypoints"]["all"]["pairs"] == 6
    if which == "oracle":
        assert recall["recall@10"] > 0.95  # not 1: a projection between cells of two surfaces
    else:
        assert recall["recall@10"] < 0.3


def test_rendered_3d_features_are_the_models_rendering_where_no_footprint_is_capped():
    from manyview.features.condense import ConDense, ConDenseConfig
    from manyview.features.evaluate import rendered3d_method
    from manyview.features.student3d import PointBackboneConfig

    torch.manual_seed(0)
    model = ConDense(ConDenseConfig(dim=4, head_hidden=8, point=PointBackboneConfig(width=8, depth=1, heads=2,
                                                                                    k=4))).eval()
    g = torch.Generator().manual_seed(0)
    points = torch.rand(200, 3, generator=g) * 2 - 1 + torch.tensor([0.0, 0.0, 6.0])
    images = torch.zeros(2, 3, 32, 32)
    K = torch.tensor([[40.0, 40.0, 16.0, 16.0]]).repeat(2, 1)
    c2w = torch.eye(4)[None].repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.2
    with torch.no_grad():
        ours = rendered3d_method(model, max_footprint=100.0)(images, K, c2w, points, None)
        f3d = model.features3d(points)
        ref, alpha = model.render(points, f3d, K, c2w, (32, 32), model.student2d.grid(32, 32))
        capped = rendered3d_method(model, max_footprint=0.05)(images, K, c2w, points, None)
    torch.testing.assert_close(ours, ref / alpha.clamp_min(1e-6)[:, None])
    assert not torch.allclose(capped, ours)
