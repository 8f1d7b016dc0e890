"""DUSt3R-style global alignment on ground-truth pairwise pointmaps of a hand-built scene.

The scene: five cameras inside a box room with a cube in it (every pixel sees a surface, so every pairwise
prediction is exact). Each edge's predictions get their own random scale, as a pairwise network's would.
"""

import math

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.projection import depth_to_pointmap
from manyview.geometry.rays import pixel_rays
from manyview.geometry.rotation import axis_angle_to_matrix, rotation_angle
from manyview.geometry.transforms import invert_rigid, rigid, transform_points
from manyview.recon.global_alignment import (
    GlobalAlignmentConfig,
    PointCloudOptimizer,
    global_alignment,
    learning_rate,
)
from manyview.recon.pairs import make_pairs
from manyview.scene import Cameras

H, W, F = 24, 32, 28.0


def _room_depth(cams: Cameras) -> torch.Tensor:
    """(N, H, W) z-depth inside the box [-3, 3] x [-2, 2] x [-4, 6] holding a cube of side 1.6 at (0.5, 0.6, 3)."""
    o, d = pixel_rays(cams.fxfycxcy, cams.c2w, H, W, 0.5, normalize=False)  # d has camera z = 1: t is z-depth
    lo, hi = torch.tensor([-3.0, -2.0, -4.0], dtype=o.dtype), torch.tensor([3.0, 2.0, 6.0], dtype=o.dtype)
    t_room = torch.maximum((lo - o) / d, (hi - o) / d).amin(-1)
    c = torch.tensor([0.5, 0.6, 3.0], dtype=o.dtype)
    a, b = (c - 0.8 - o) / d, (c + 0.8 - o) / d
    t_in, t_out = torch.minimum(a, b).amax(-1), torch.maximum(a, b).amin(-1)
    return torch.where((t_in < t_out) & (t_in > 0), t_in, t_room)


def _scene(n=5, cx_shift=0.0):
    """Cameras (principal point at the image centre + ``cx_shift``) and their depth maps, float64."""
    k = torch.arange(n, dtype=torch.float64)
    yaw = -0.5 + k / (n - 1)
    aa = torch.stack([0.05 * torch.sin(3 * k), yaw, 0.05 * torch.cos(2 * k)], -1)
    centers = torch.stack([-1.0 + 2.0 * k / (n - 1), 0.3 * torch.sin(k), -1.5 + 0.3 * k], -1)
    fxfycxcy = torch.tensor([F, F, W / 2 + cx_shift, H / 2 + cx_shift], dtype=torch.float64).expand(n, 4)
    cams = Cameras(fxfycxcy, rigid(axis_angle_to_matrix(aa), centers), torch.tensor([H, W]))
    depth = _room_depth(cams)
    assert depth.min() > 1.0  # every pixel sees a surface in front of the camera
    return cams, depth


def _pairwise(cams, depth, edges, seed=0):
    """Exact pairwise predictions (both views in view i's frame), a random scale per edge, conf in [1, 10]."""
    g = torch.Generator().manual_seed(seed)
    local = depth_to_pointmap(depth, cams.fxfycxcy)
    world = depth_to_pointmap(depth, cams.fxfycxcy, cams.c2w)
    scale = 0.5 + 1.5 * torch.rand(len(edges), generator=g, dtype=torch.float64)
    pts_i = torch.stack([local[i] * s for (i, _), s in zip(edges, scale)])
    pts_j = torch.stack([transform_points(invert_rigid(cams.c2w[i]), world[j]) * s for (i, j), s in zip(edges, scale)])
    conf = 1 + 9 * torch.rand(2, len(edges), H, W, generator=g, dtype=torch.float64)
    return pts_i.float(), pts_j.float(), conf[0].float(), conf[1].float()


def _pose_errors(est: Cameras, gt: Cameras) -> tuple[float, float]:
    """Largest relative-rotation error and relative-translation direction error (signed), in degrees."""
    rot, trans = [], []
    for i in range(len(gt)):
        for j in range(len(gt)):
            if i == j:
                continue
            r_est, r_gt = est.R[i].T @ est.R[j], gt.R[i].T @ gt.R[j]
            rot.append(float(rotation_angle(r_est.double().T @ r_gt.double())))
            t_est = (est.R[i].T @ (est.centers[j] - est.centers[i])).double()
            t_gt = (gt.R[i].T @ (gt.centers[j] - gt.centers[i])).double()
            trans.append(math.acos(float(torch.cosine_similarity(t_est, t_gt, dim=0).clamp(-1, 1))))
    return math.degrees(max(rot)), math.degrees(max(trans))


# DUSt3R's convention: predictions made on integer pixel indices with the principal point at (W/2, H/2), i.e.
# manyview intrinsics with cx = W/2 + 0.5.
DUST3R = dict(cx_shift=0.5, offset=0.0)


@pytest.mark.parametrize("graph", ["complete", "swin-1", "oneref-2"])
def test_spanning_tree_init_alone_recovers_ground_truth(graph):
    cams, depth = _scene(cx_shift=DUST3R["cx_shift"])
    edges = make_pairs(5, graph)
    res = global_alignment(edges, *_pairwise(cams, depth, edges), GlobalAlignmentConfig(iterations=0))
    rot, trans = _pose_errors(res.cameras, cams)
    assert rot < 0.01 and trans < 0.01
    assert torch.allclose(res.cameras.fx.double(), cams.fx, rtol=1e-4)
    assert res.cameras.fxfycxcy[:, 2:].tolist() == [[W / 2 + 0.5, H / 2 + 0.5]] * 5
    assert torch.allclose(res.cameras.c2w[0], torch.eye(4), atol=1e-6)  # output frame: view 0's camera
    assert len(res.losses) == 1 and res.losses[0] < 1e-4
    # depths equal the true ones up to the one global scale of the result
    ratio = res.depths.double() / depth
    assert float(ratio.std() / ratio.mean()) < 1e-4


def test_principal_point_convention():
    """Predictions made with pixel centres at +0.5 need ``pixel_offset=0.5``; the wrong offset shows in the loss."""
    cams, depth = _scene(cx_shift=0.0)
    edges = make_pairs(5, "complete")
    preds = _pairwise(cams, depth, edges)
    right = global_alignment(edges, *preds, GlobalAlignmentConfig(iterations=0, pixel_offset=0.5))
    wrong = global_alignment(edges, *preds, GlobalAlignmentConfig(iterations=0, pixel_offset=0.0))
    assert right.cameras.fxfycxcy[0, 2:].tolist() == [W / 2, H / 2]
    assert max(_pose_errors(right.cameras, cams)) < 0.01
    assert right.losses[0] < 1e-4 < 1e-2 < wrong.losses[0]


def test_optimisation_recovers_ground_truth_from_a_perturbed_start():
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "complete")
    opt = PointCloudOptimizer(edges, *_pairwise(cams, depth, edges))  # the defaults: 300 iterations, cosine
    opt.init_mst()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # per-view depth scales, every pose and the focals off
        opt.log_depth.add_(0.05 * torch.randn(5, 1, generator=g))
        opt.im_poses.add_(0.02 * torch.randn(opt.im_poses.shape, generator=g))
        opt.pw_poses.add_(0.02 * torch.randn(opt.pw_poses.shape, generator=g))
        opt.log_focal.add_(opt.config.focal_break * 0.03)
    start = opt.result([])
    assert min(_pose_errors(start.cameras, cams)) > 5
    losses = opt.optimize()
    res = opt.result(losses)
    rot, trans = _pose_errors(res.cameras, cams)
    assert rot < 1.0 and trans < 2.0
    assert float((res.cameras.fx.double() / F - 1).abs().max()) < 0.01
    assert len(losses) == 301 and losses[-1] < 1e-2 * losses[0]
    # the edge scales stay normalised to base_scale
    assert float(opt.pairwise_scales().detach().log().mean().exp()) == pytest.approx(0.5, rel=1e-5)


def test_optimisation_improves_on_the_spanning_tree_with_inconsistent_pairs():
    """Each edge's view-j prediction is off by its own small rigid motion; the tree chains those errors, the
    global loss averages them over every edge."""
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "complete")
    pts_i, pts_j, conf_i, conf_j = _pairwise(cams, depth, edges)
    g = torch.Generator().manual_seed(2)
    noisy = torch.stack([p @ axis_angle_to_matrix(0.02 * torch.randn(3, generator=g)).float().T
                         + 0.02 * torch.randn(3, generator=g) for p in pts_j])
    tree = global_alignment(edges, pts_i, noisy, conf_i, conf_j, GlobalAlignmentConfig(iterations=0))
    full = global_alignment(edges, pts_i, noisy, conf_i, conf_j, GlobalAlignmentConfig(iterations=300))
    tree_rot, tree_trans = _pose_errors(tree.cameras, cams)
    full_rot, full_trans = _pose_errors(full.cameras, cams)
    assert full_rot < 0.5 * tree_rot and full_trans < 0.5 * tree_trans
    assert full.losses[-1] < 0.7 * tree.losses[0]


def test_vectorised_loss_matches_the_per_edge_loop():
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "swin-2")
    preds = [t.double() for t in _pairwise(cams, depth, edges)]
    opt = PointCloudOptimizer(edges, *preds, GlobalAlignmentConfig(optimize_pp=True))
    opt.init_mst()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in opt.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    fast, ref = opt(), opt.loss_reference()
    assert float(fast.detach()) > 1e-2
    assert float(fast.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    grads_fast = torch.autograd.grad(fast, list(opt.parameters()))
    grads_ref = torch.autograd.grad(ref, list(opt.parameters()))
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_pointmaps_depths_and_cameras_agree_and_build_a_reconstruction():
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "swin-1")
    res = global_alignment(edges, *_pairwise(cams, depth, edges), GlobalAlignmentConfig(iterations=3))
    local = depth_to_pointmap(res.depths, res.cameras.fxfycxcy)  # manyview convention: centres at +0.5
    assert torch.allclose(transform_points(res.cameras.c2w, local), res.pointmaps, atol=1e-5)
    images = torch.rand(5, 3, H, W)
    rec = res.to_reconstruction(images, names=[f"v{k}" for k in range(5)], min_confidence=5.0)
    keep = res.confidences > 5.0
    assert len(rec.points) == int(keep.sum()) > 0
    assert torch.equal(rec.points.xyz, res.pointmaps[keep])
    assert torch.equal(rec.points.rgb, images.permute(0, 2, 3, 1)[keep])
    assert torch.allclose(rec.local_pointmaps, local)
    assert rec.names == ["v0", "v1", "v2", "v3", "v4"]
    # the per-view confidence is the largest any edge gave the pixel
    _, _, conf_i, conf_j = _pairwise(cams, depth, edges)
    expected = torch.stack([torch.stack([c[e] for e, (i, j) in enumerate(edges) for c, v in ((conf_i, i), (conf_j, j))
                                         if v == view]).amax(0) for view in range(5)])
    assert torch.equal(res.confidences, expected)


def test_progress_callback_and_learning_rate_schedule():
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "swin-1")
    calls = []
    res = global_alignment(edges, *_pairwise(cams, depth, edges), GlobalAlignmentConfig(iterations=4),
                           progress=lambda k, total, loss: calls.append((k, total, loss)))
    assert [(k, total) for k, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [loss for _, _, loss in calls] == res.losses[:4] and len(res.losses) == 5
    cfg = GlobalAlignmentConfig(iterations=300, lr=0.01, lr_min=1e-6)
    assert learning_rate(cfg, 0) == pytest.approx(0.01)
    assert learning_rate(cfg, 150) == pytest.approx((0.01 + 1e-6) / 2)
    assert learning_rate(cfg, 299) == pytest.approx(1e-6, abs=1e-6)
    lin = GlobalAlignmentConfig(iterations=100, schedule="linear")
    assert learning_rate(lin, 25) == pytest.approx(0.01 + (1e-6 - 0.01) * 0.25)


def test_bad_inputs_raise_manyview_errors():
    cams, depth = _scene(cx_shift=0.5)
    edges = make_pairs(5, "complete")
    pts_i, pts_j, conf_i, conf_j = _pairwise(cams, depth, edges)
    cases = [
        (edges, pts_i, pts_j, conf_i * 0.5, conf_j, "confidences must be >= 1"),
        (edges, pts_i, pts_j[:, :-1], conf_i, conf_j, "pts_j must be"),
        (edges[:-1], pts_i, pts_j, conf_i, conf_j, "pts_i must be"),
        ([(0, 0)] + edges[1:], pts_i, pts_j, conf_i, conf_j, "with itself"),
        ([(i + 1, j + 1) for i, j in edges], pts_i, pts_j, conf_i, conf_j, "without gaps"),
    ]
    for e, a, b, c, d, match in cases:
        with pytest.raises(ManyviewError, match=match):
            global_alignment(e, a, b, c, d, GlobalAlignmentConfig(iterations=0))
    nan = pts_i.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ManyviewError, match="non-finite"):
        global_alignment(edges, nan, pts_j, conf_i, conf_j)
    # two separate pairs of views: nothing ties {0, 1} to {2, 3}
    split = [(0, 1), (1, 0), (2, 3), (3, 2)]
    with pytest.raises(ManyviewError, match="does not connect"):
        global_alignment(split, pts_i[:4], pts_j[:4], conf_i[:4], conf_j[:4])
    with pytest.raises(ManyviewError, match="schedule"):
        global_alignment(edges, pts_i, pts_j, conf_i, conf_j, GlobalAlignmentConfig(schedule="step"))
