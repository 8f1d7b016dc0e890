"""The spine held against exact ground truth from manyview's own synthetic scenes.

Each test is a contract between modules written separately: the renderer's depth and cameras, the COLMAP and
transforms.json writers as read back by pycolmap itself, and the geometric solvers.
"""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from manyview import synth
from manyview.geometry.focal import estimate_focal_weiszfeld
from manyview.geometry.pnp import pnp_ransac
from manyview.geometry.projection import depth_to_pointmap, project
from manyview.geometry.rays import pixel_grid
from manyview.io.dataset import write_dataset
from manyview.io.transforms_json import read_transforms_json
from manyview.metrics.pose import pose_metrics


@pytest.fixture(scope="module")
def scene_views():
    _, views = synth.generate(11, kind="object", num_views=5, height=96, width=128)
    return views.to(torch.float64)


def test_synthetic_scene_round_trips_through_pycolmap_and_transforms_json(tmp_path, scene_views):
    views = scene_views
    out = write_dataset(tmp_path / "scene with spaces é", views)
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))  # pycolmap itself, not manyview's reader
    by_name = {im.name.split("/")[-1]: im for im in rec.images.values()}
    assert len(by_name) == len(views)
    for i, name in enumerate(views.names):
        image = next(im for n, im in by_name.items() if n.split(".")[0] == name.split(".")[0])
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        np.testing.assert_allclose(cam_from_world.matrix(), views.cameras.w2c[i, :3].numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.cameras[image.camera_id].params, views.cameras.fxfycxcy[i].numpy(), atol=1e-4)

    again = read_transforms_json(out / "transforms.json", dtype=torch.float64)
    torch.testing.assert_close(again.cameras.c2w, views.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.cameras.fxfycxcy, views.cameras.fxfycxcy, atol=1e-4, rtol=0)
    assert torch.equal(again.cameras.image_size, views.cameras.image_size)


def test_unprojected_depth_reprojects_to_its_own_pixels(scene_views):
    cams, depth = scene_views.cameras, scene_views.depths
    world = depth_to_pointmap(depth, cams.fxfycxcy, cams.c2w)  # (N, H, W, 3)
    n, h, w = depth.shape
    uv, z = project(world.reshape(n, -1, 3), cams.fxfycxcy, cams.w2c)
    grid = pixel_grid(h, w, dtype=torch.float64).reshape(-1, 2)
    valid = depth.reshape(n, -1) > 0
    assert valid.float().mean() > 0.5
    assert (uv - grid)[valid].abs().max() < 1e-4  # pixels; cameras carry float32 rounding
    torch.testing.assert_close(z[valid], depth.reshape(n, -1)[valid])


def test_pnp_on_ground_truth_pointmaps_recovers_the_poses(scene_views):
    cams, depth = scene_views.cameras, scene_views.depths
    world = depth_to_pointmap(depth, cams.fxfycxcy, cams.c2w)
    grid = pixel_grid(*depth.shape[1:], dtype=torch.float64)
    estimated = []
    for i in range(len(cams)):
        valid = depth[i] > 0
        ok, c2w, _ = pnp_ransac(world[i][valid], grid[valid], cams.K[i], seed=0)
        assert ok
        estimated.append(c2w)
    pred = cams.with_poses(torch.stack(estimated))
    torch.testing.assert_close(pred.c2w, cams.c2w, atol=1e-5, rtol=0)
    metrics = pose_metrics(pred, cams, thresholds=(5,))
    assert metrics["RRA@5"] == pytest.approx(100.0) and metrics["RTA@5"] == pytest.approx(100.0)


def test_weiszfeld_recovers_the_ground_truth_focal(scene_views):
    cams, depth = scene_views.cameras, scene_views.depths
    local = depth_to_pointmap(depth, cams.fxfycxcy)  # camera frame
    pp = cams.fxfycxcy[:, 2:]
    focal = estimate_focal_weiszfeld(local, mask=depth > 0, principal_point=pp, offset=0.5)
    torch.testing.assert_close(focal.reshape(-1), cams.fx, rtol=1e-6, atol=0)
