"""Ground-truth samples and held-out seeds: points where the pixels see them, trajectories as training draws them."""

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.geometry.projection import project
from manyview.geometry.transforms import invert_rigid
from manyview.scene import Views
from manyview.synth import generate
from manyview.synth.samples import (EVAL_SEED_START, eval_sample, eval_scene_seed, synthetic_sample,
                                    trajectory_frames, views_to_sample)


def test_sample_points_project_back_to_their_pixels_at_their_depth():
    _, views = generate(4, "object", num_views=3, height=24, width=32)
    s = views_to_sample(views)
    assert s["images"].shape == (3, 3, 24, 32) and s["pts3d"].shape == (3, 24, 32, 3)
    valid = s["valid"]
    assert torch.equal(valid, (views.depths > 0) & views.masks)
    assert valid.any() and (s["pts3d"][~valid] == 0).all()
    uv, z = project(s["pts3d"].flatten(1, 2), s["fxfycxcy"], invert_rigid(s["c2w"]))
    v, u = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    pixels = torch.stack([u, v], -1).flatten(0, 1).expand(3, -1, -1)
    flat = valid.flatten(1)
    torch.testing.assert_close(uv[flat], pixels[flat], atol=1e-3, rtol=0)
    torch.testing.assert_close(z[flat], views.depths.flatten(1)[flat].float(), atol=1e-4, rtol=1e-5)


def test_samples_need_cameras_and_depth():
    with pytest.raises(ManyviewError, match="no cameras"):
        views_to_sample(Views(images=torch.rand(2, 3, 8, 8)), "folder")
    _, views = generate(4, "object", num_views=2, height=16, width=16)
    with pytest.raises(ManyviewError, match="no depth"):
        views_to_sample(Views(images=views.images, cameras=views.cameras))


def test_held_out_seeds_lie_beyond_training_seeds():
    assert eval_scene_seed(0) == EVAL_SEED_START and eval_scene_seed(7) == EVAL_SEED_START + 7
    with pytest.raises(ManyviewError, match=">= 0"):
        eval_scene_seed(-1)
    held_out = eval_sample(2, "room", 2, 16, 16)
    assert int(held_out["scene_seed"]) == EVAL_SEED_START + 2
    torch.testing.assert_close(held_out["images"], synthetic_sample(EVAL_SEED_START + 2, "room", 2, 16, 16)["images"])


def test_trajectories_alternate_kinds_with_the_seed_and_are_deterministic():
    images, fxfycxcy, c2w = trajectory_frames(6, ("object", "room"), frames=4, size=16, orbit_arc_deg=60.0)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
    assert fxfycxcy.shape == (4, 4) and c2w.shape == (4, 4, 4) and c2w.dtype == torch.float32
    _, obj = generate(6, "object", 4, 16, 16, arc_deg=60.0)  # even seed: the first kind
    torch.testing.assert_close(c2w, obj.cameras.c2w.float())
    torch.testing.assert_close(images, (obj.images.clamp(0, 1) * 255).round().to(torch.uint8))
    _, room = generate(7, "room", 4, 16, 16)  # odd seed: the second kind
    torch.testing.assert_close(trajectory_frames(7, ("object", "room"), 4, 16)[2], room.cameras.c2w.float())
    with pytest.raises(ManyviewError, match="kinds"):
        trajectory_frames(0, (), 4, 16)
