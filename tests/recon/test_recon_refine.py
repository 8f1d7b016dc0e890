"""Bundle adjustment from initial cameras: ground-truth cameras perturbed by noise are recovered, cameras too wrong
to agree with the photos are left as they were, and the inverse of a resize-and-crop brings cameras back onto the
source images."""

import math

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.rotation import random_rotation
from manyview.metrics.pose import pose_metrics
from manyview.recon.posed_photos import cameras_at_source_size
from manyview.recon.refine import _drop_weak_points, refine_poses
from manyview.scene import Cameras, Views
from manyview.scene.resize import ImageTransform
from manyview.synth import generate

from camera_noise import perturbed

pytest.importorskip("pycolmap")

SEED, N, SIZE = 3, 8, 192


@pytest.fixture(scope="module")
def views() -> Views:
    _, views = generate(SEED, "object", N, SIZE, SIZE, arc_deg=80.0, supersample=2)
    return views


def test_bundle_adjustment_recovers_perturbed_ground_truth(views, tmp_path):
    gt = views.cameras.to(torch.float64)
    initial = perturbed(gt, rotation_deg=5.0, translation=0.05, focal=1.1)
    before = pose_metrics(initial, gt)
    assert before["RRA@5"] < 60.0  # the noise matters: about half the pairs are off by more than 5 degrees

    res = refine_poses(views, initial, undistorted_dir=tmp_path / "und", progress=False)
    after = pose_metrics(res.cameras.to(torch.float64), gt)
    assert res.num_refined == N and res.unrefined_names == []
    assert after["RRA@5"] == 100.0 and after["RTA@5"] == 100.0, after
    assert after["rot_err_median"] < 0.3, after  # measured 0.09 degrees
    assert abs(float(res.cameras.fx[0]) / float(gt.fx[0]) - 1) < 0.01  # the 10 % focal error is gone
    assert res.rejected_pairs == 0 and res.verified_pairs >= N - 1
    assert 0 < res.mean_reprojection_error < 1.0 and len(res.points) > 100
    assert (res.observations >= 15).all() and res.track_lengths.min() >= 2
    assert res.camera_model == "SIMPLE_RADIAL" and len(res.camera_params[0]) == 4
    assert set(res.timings) == {"features", "matching", "bundle_adjustment", "undistortion"}
    assert sorted(p.name for p in (tmp_path / "und" / "images").iterdir()) == sorted(res.model_names)
    assert torch.equal(res.initial.c2w, initial.c2w)  # the caller's cameras are kept as given


def test_cameras_that_disagree_with_the_photos_are_left_as_they_were(views):
    """Random rotations: every verified pair disagrees with them, so nothing is refined and nothing changes
    (no worse than the initialisation)."""
    gt = views.cameras.to(torch.float64)
    c2w = gt.c2w.clone()
    c2w[:, :3, :3] = random_rotation(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    initial = Cameras(gt.fxfycxcy, c2w, gt.image_size)
    res = refine_poses(views, initial, progress=False)
    assert res.verified_pairs > 0 and res.rejected_pairs == res.verified_pairs
    assert res.num_refined == 0 and len(res.points) == 0 and math.isnan(res.mean_reprojection_error)
    assert torch.allclose(res.cameras.c2w.double(), initial.c2w) and torch.allclose(
        res.cameras.fxfycxcy.double(), initial.fxfycxcy)


def test_a_view_without_matches_keeps_its_initial_pose_in_the_refined_frame(views):
    """A blank photo among textured ones: it is not refined, and its initial pose follows the similarity between
    the refined views' initial and refined poses, so its rotation relative to them is the initial one."""
    images = views.images.clone()
    images[5] = 0.5
    gt = views.cameras.to(torch.float64)
    initial = perturbed(gt, rotation_deg=2.0, translation=0.02, focal=1.0, seed=2)
    res = refine_poses(Views(images, names=[f"v{i}.png" for i in range(N)]), initial, progress=False)
    assert res.refined.tolist() == [i != 5 for i in range(N)] and res.unrefined_names == ["v5.png"]
    keep = res.refined
    assert pose_metrics(res.cameras[keep].to(torch.float64), gt[keep])["RRA@5"] == 100.0
    R = res.cameras.R.double()
    # the change of frame, as each refined view sees it, agrees (to the few degrees BA corrected) with the one the
    # unrefined view was moved by
    moved = R[5] @ initial.R[5].T
    for j in torch.nonzero(keep).flatten().tolist():
        change = R[j] @ initial.R[j].T
        angle = torch.arccos(((moved.T @ change).trace() - 1).clamp(-2, 2) / 2)
        assert math.degrees(float(angle)) < 4.0
    # its centre sits where the similarity fitted to the refined centres puts it
    c0, c1 = initial.centers[keep], res.cameras.centers[keep].double()
    scale = ((c1 - c1.mean(0)) * ((c0 - c0.mean(0)) @ moved.T)).sum() / ((c0 - c0.mean(0)) ** 2).sum()
    expected = scale * moved @ (initial.centers[5] - c0.mean(0)) + c1.mean(0)
    assert torch.allclose(res.cameras.centers[5].double(), expected, atol=1e-3 * float(c1.std()))


@pytest.mark.parametrize("case", ["count", "size", "nan", "model"])
def test_refine_rejects_bad_input(views, case):
    cams = views.cameras
    args = {
        "count": (views, cams[:4], {}),
        "size": (views, cams.resized(96, 96), {}),
        "nan": (views, Cameras(cams.fxfycxcy, torch.full_like(cams.c2w, float("nan")), cams.image_size), {}),
        "model": (views, cams, {"camera_model": "OPENCV_FISHEYE"}),
    }[case]
    with pytest.raises(ManyviewError):
        refine_poses(args[0], args[1], progress=False, **args[2])


@pytest.mark.parametrize("source,target", [((480, 854), (112, 112)), ((480, 854), (288, 512)),
                                           ((960, 540), (512, 288)), ((100, 100), (64, 64))])
def test_cameras_at_source_size_undoes_the_resize_and_crop(source, target):
    """Moving cameras onto the network's images and back gives the source cameras again, and a point projects
    onto the same source pixel either way."""
    h, w = source
    g = torch.Generator().manual_seed(0)
    f = torch.tensor([[1.1 * w, 1.1 * w, w / 2 + 3.0, h / 2 - 2.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)[None]
    cams = Cameras(f, c2w, torch.tensor([[h, w]]))
    t = ImageTransform.fitting(source, target, "center")
    back = cameras_at_source_size(t.apply(cams), [t])
    assert back.image_size.tolist() == [[h, w]]
    assert torch.allclose(back.fxfycxcy, cams.fxfycxcy, rtol=1e-9, atol=1e-9)
    # a pixel of the network image maps to the source pixel that the transform took it from
    top, left, _, _ = t.crop
    sy, sx = t.resized_size[0] / h, t.resized_size[1] / w
    net = t.apply(cams)
    x_net = torch.rand(2, generator=g, dtype=torch.float64) * 50
    ray = (x_net - net.fxfycxcy[0, 2:]) / net.fxfycxcy[0, :2]
    x_src = ray * back.fxfycxcy[0, :2] + back.fxfycxcy[0, 2:]
    assert torch.allclose(x_src, torch.stack([(x_net[0] + left) / sx, (x_net[1] + top) / sy]), atol=1e-9)
    assert np.isfinite(x_src.numpy()).all()


def test_points_whose_rays_barely_meet_are_dropped():
    """Two cameras 1 apart: a point 2 away is seen under ~28 degrees and stays; one 1000 away (0.06 degrees, the
    depth a walkthrough's near-parallel rays leave unconstrained) goes, as does one over the error threshold."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=100, height=100,
                                                    params=[100, 50, 50], camera_id=1))
    for i, x in enumerate([0.0, 1.0]):
        image = pycolmap.Image(name=f"{i}.png", camera_id=1, image_id=i + 1)
        image.points2D = pycolmap.Point2DList([pycolmap.Point2D(np.array([50.0, 50.0])) for _ in range(3)])
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([-x, 0, 0])))
    ids = []
    for k, depth in enumerate([2.0, 1000.0, 3.0]):
        track = pycolmap.Track()
        track.add_element(1, k)
        track.add_element(2, k)
        ids.append(rec.add_point3D(np.array([0.5, 0.0, depth]), track, np.zeros(3, dtype=np.uint8)))
    rec.points3D[ids[2]].error = 9.0
    assert _drop_weak_points(rec, 1.5) == 1 and set(rec.points3D) == {ids[0], ids[2]}
    assert _drop_weak_points(rec, 1.5, max_error_px=4.0) == 1 and set(rec.points3D) == {ids[0]}
