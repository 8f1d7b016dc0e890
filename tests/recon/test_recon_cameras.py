"""Fast3R camera recovery: parity with the official implementation and recovery of ground-truth cameras."""

from pathlib import Path

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.alignment import apply_sim3
from manyview.geometry.projection import depth_to_pointmap
from manyview.geometry.rotation import axis_angle_to_matrix
from manyview.geometry.transforms import invert_rigid, rigid, transform_points
from manyview.metrics.pose import pose_metrics
from manyview.recon import build_reconstruction, estimate_cameras, recover_cameras
from manyview.scene import Cameras, Reconstruction

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "parity" / "fast3r_tiny" / "cameras.safetensors"


def _fixture():
    if not FIXTURE.parent.parent.parent.exists():
        pytest.skip(f"shared data not found at {FIXTURE.parent.parent.parent}")
    from safetensors.torch import load_file

    return load_file(str(FIXTURE))


def test_parity_with_official_camera_recovery():
    d = _fixture()
    pts, conf = d["synthetic.pts3d_in_other_view"], d["synthetic.conf"]
    for b in range(pts.shape[0]):
        est = estimate_cameras(pts[b], conf[b])  # official defaults: first-view focal, all pixels, 100 its, 5 px
        assert torch.allclose(est.focal, d["synthetic.est_focal"][b], rtol=1e-3)
        assert torch.allclose(est.cameras.c2w, d["synthetic.est_c2w"][b], atol=1e-4)
        assert est.success.all()
        # Official grid puts the principal point at (W/2, H/2) on integer pixel indices; manyview adds 0.5.
        h, w = pts.shape[2:4]
        assert est.cameras.fxfycxcy[0, 2:].tolist() == [w / 2 + 0.5, h / 2 + 0.5]
        assert est.cameras.image_size[0].tolist() == [h, w]
    assert float(d["synthetic.gt_focal"]) == pytest.approx(60.0)


def _gt_scene(seed=0, n=4, h=30, w=40, f=35.0):
    """Cameras in a loose ring looking at the origin, tilted depth planes, pointmaps in view 0's frame."""
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.cat([0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64),
                                        torch.linspace(0, 0.6, n, dtype=torch.float64)[:, None],
                                        0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)], 1))
    c2w = rigid(R, 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    c2w = invert_rigid(c2w[:1]) @ c2w  # view 0 at the identity, as Fast3R's frame
    v, u = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64),
                          indexing="ij")
    depth = 3 + 0.5 * u + 0.3 * v * torch.rand(n, 1, 1, generator=g, dtype=torch.float64) + 0.2 * torch.sin(3 * u)
    # The network's convention: pixel (i, j) at integer (j, i), principal point (W/2, H/2).
    fxfycxcy = torch.tensor([f, f, w / 2, h / 2], dtype=torch.float64)
    world = depth_to_pointmap(depth, fxfycxcy, c2w, offset=0.0)
    local = depth_to_pointmap(depth, fxfycxcy, offset=0.0)
    conf = 1 + torch.rand(n, h, w, generator=g, dtype=torch.float64) * 5
    return world.float(), local.float(), conf.float(), c2w, f


def test_recovers_gt_cameras_from_gt_pointmaps():
    world, _, conf, c2w, f = _gt_scene()
    n, h, w = world.shape[:3]
    est = estimate_cameras(world, conf)
    assert torch.allclose(est.focal, torch.full((n,), f), rtol=1e-4)
    assert torch.allclose(est.cameras.c2w.double(), c2w, atol=1e-4)
    gt = Cameras(torch.tensor([f, f, w / 2 + 0.5, h / 2 + 0.5]).expand(n, 4), c2w.float(), torch.tensor([h, w]))
    m = pose_metrics(est.cameras, gt)
    assert m["RRA@5"] == 100.0 and m["RTA@5"] == 100.0 and m["mAA@30"] > 96.0
    # The manyview convention holds: the recovered cameras re-create the network's pointmaps from z-depth.
    depth_cam = transform_points(invert_rigid(c2w[1]).float(), world[1])[..., 2]
    again = depth_to_pointmap(depth_cam, est.cameras.fxfycxcy[1], est.cameras.c2w[1])  # offset 0.5
    assert torch.allclose(again, world[1], atol=1e-3)


def test_pnp_on_most_confident_pixels_ignores_corruption():
    world, _, conf, c2w, _ = _gt_scene(seed=1)
    g = torch.Generator().manual_seed(1)
    corrupt = conf < 2.5  # low-confidence pixels are wrong
    noisy = world.clone()
    noisy[corrupt] += torch.randn(int(corrupt.sum()), 3, generator=g)
    top = estimate_cameras(noisy, conf, pnp_conf_percentile=85.0, focal=35.0)
    assert torch.allclose(top.cameras.c2w.double(), c2w, atol=1e-4)
    assert (top.num_inliers <= 0.16 * world.shape[1] * world.shape[2]).all()


def test_focal_modes():
    world, local, conf, c2w, f = _gt_scene(seed=2, n=3)
    with_local = estimate_cameras(world, conf, focal_mode="first_view_local", local_pts=local, local_conf=conf)
    assert torch.allclose(with_local.focal, torch.full((3,), f), rtol=1e-4)
    # On this small image every focal in the sweep fits all pixels within the official 5 px, so the first
    # (S/2) wins the tie, as in the official code (the sweep itself is tested in test_geometry_focal_pnp).
    s = max(world.shape[1:3])
    sweep = estimate_cameras(world[1:], conf[1:], focal_mode="per_view_sweep")
    assert sweep.success.all() and torch.allclose(sweep.focal, torch.full((2,), s / 2))
    assert torch.allclose(sweep.focal, sweep.cameras.fx)
    fixed = recover_cameras(world, conf, focal=f)
    assert torch.allclose(fixed.fx, torch.full((3,), f)) and torch.allclose(fixed.c2w.double(), c2w, atol=1e-4)
    with pytest.raises(ManyviewError):
        estimate_cameras(world, conf, focal_mode="first_view_local")
    with pytest.raises(ManyviewError):
        estimate_cameras(world, conf, focal_mode="nonsense")
    with pytest.raises(ManyviewError):
        estimate_cameras(world[0], conf)


def test_failed_pnp_gives_identity_and_flag():
    world, _, conf, _, _ = _gt_scene(seed=3, n=2)
    conf = conf.clone()
    conf[1] = 1.0  # conf > 1 is false everywhere: no pixel for PnP in view 1
    est = estimate_cameras(world, conf)
    assert est.success.tolist() == [True, False]
    assert torch.equal(est.cameras.c2w[1], torch.eye(4)) and est.num_inliers[1] == 0


def test_build_reconstruction_global_and_local():
    world, local, conf, c2w, _ = _gt_scene(seed=4, n=3)
    n, h, w = world.shape[:3]
    images = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(4))
    rec = build_reconstruction(images, world, conf, min_conf_percentile=50.0, names=["a", "b", "c"])
    assert isinstance(rec, Reconstruction) and rec.names == ["a", "b", "c"]
    assert len(rec.points) == pytest.approx(n * h * w / 2, abs=n)
    keep = conf >= torch.quantile(conf.flatten(1), 0.5, dim=1)[:, None, None]
    assert torch.equal(rec.points.xyz, world[keep])
    assert torch.equal(rec.points.rgb, images.permute(0, 2, 3, 1)[keep])
    assert torch.allclose(rec.cameras.c2w.double(), c2w, atol=1e-4)
    assert rec.info["pointmaps"] == "global"

    # Local pointmaps at another scale: aligned onto the global frame before fusing.
    local_scaled = 0.3 * local
    rec_l = build_reconstruction(images, world, conf, local_pts=local_scaled, local_conf=conf + 1)
    assert rec_l.info["pointmaps"] == "local_aligned"
    assert torch.allclose(rec_l.pointmaps, world, atol=1e-4)
    assert rec_l.local_pointmaps is local_scaled and torch.equal(rec_l.confidences, conf + 1)
    assert rec_l.info["local_to_global_scale"] == pytest.approx([1 / 0.3] * n, rel=1e-4)
    with pytest.raises(ManyviewError):
        build_reconstruction(images[:2], world, conf)
    with pytest.raises(ManyviewError):
        build_reconstruction(images, world, conf, local_pts=local)


def test_alignment_helper_is_consistent_with_apply_sim3():
    # Local alignment inside build_reconstruction uses the same Sim(3) as geometry.alignment.apply_sim3.
    world, local, conf, _, _ = _gt_scene(seed=5, n=2)
    from manyview.geometry.alignment import align_pointmaps_local_to_global

    aligned, s, R, t = align_pointmaps_local_to_global(local, world, conf)
    assert torch.allclose(apply_sim3(local.flatten(1, 2), s, R, t).reshape(aligned.shape), aligned)
