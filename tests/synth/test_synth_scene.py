"""Synthetic scenes and trajectories: determinism, and cameras where they should be."""

import numpy as np
import pytest
import torch

from manyview.geometry.projection import project
from manyview.synth import (
    SAMPLE_SEED, SceneConfig, generate, make_scene, orbit_cameras, render, sample_scene, walkthrough_cameras,
)


def _signature(scene):
    return [(p.shape, p.pose.tobytes(), p.size.tobytes(), p.material, p.is_object) for p in scene.primitives]


@pytest.mark.parametrize("kind", ["object", "room"])
def test_same_seed_same_scene_and_images_other_seed_differs(kind):
    a, va = generate(11, kind, num_views=2, height=24, width=32)
    b, vb = generate(11, kind, num_views=2, height=24, width=32)
    c, vc = generate(12, kind, num_views=2, height=24, width=32)
    assert _signature(a) == _signature(b) and _signature(a) != _signature(c)
    assert torch.equal(va.images, vb.images) and torch.equal(va.depths, vb.depths)
    assert torch.equal(va.cameras.c2w, vb.cameras.c2w)
    assert not torch.equal(va.images, vc.images)
    _, vd = generate(11, kind, num_views=2, height=24, width=32, camera_seed=1)  # same scene, other path
    assert not torch.equal(va.cameras.c2w, vd.cameras.c2w)


def test_generation_ignores_global_rng_state():
    torch.manual_seed(0)
    np.random.seed(0)
    _, a = generate(3, "object", num_views=1, height=16, width=16)
    torch.manual_seed(1)
    np.random.seed(1)
    torch.rand(5)
    np.random.rand(5)
    _, b = generate(3, "object", num_views=1, height=16, width=16)
    assert torch.equal(a.images, b.images)


def test_scene_contents():
    for seed in range(4):
        obj = make_scene(seed, "object")
        shapes = {p.shape for p in obj.primitives}
        assert "quad" in shapes and len(shapes - {"quad"}) >= 1
        assert sum(p.is_object for p in obj.primitives) >= 3 and obj.sky is not None
        room = make_scene(seed, "room")
        assert sum(not p.is_object for p in room.primitives) == 6  # floor, ceiling, four walls
        assert sum(p.is_object for p in room.primitives) >= 5 and room.sky is None
    assert len({p.material.pattern for s in range(6) for p in make_scene(s, "object").primitives}) >= 5
    few = make_scene(0, "object", SceneConfig(num_objects=(1, 1), sky=False))
    assert sum(p.is_object for p in few.primitives) in (1, 2) and few.sky is None  # (+ a ball on a box)


def test_room_cameras_inside_the_room_and_clear_of_furniture():
    for seed in range(6):
        scene = make_scene(seed, "room")
        cams = walkthrough_cameras(scene, 40, 32, 32, seed=seed)
        c = cams.centers.double()
        lo = torch.as_tensor(scene.center - scene.extent)
        hi = torch.as_tensor(scene.center + scene.extent)
        assert ((c > lo + 0.5) & (c < hi - 0.5)).all()
        assert scene.signed_distance(c, objects_only=True).min() > 0.2  # not inside (or touching) furniture
        step = (c[1:] - c[:-1]).norm(dim=-1)
        assert (step > 0.05).all() and (step < 0.4).all()  # walking forward, smoothly
        forward = cams.R[:, :, 2].double()
        assert ((forward[:-1] * forward[1:]).sum(-1) > np.cos(np.radians(20))).all()  # turning gradually
        up = cams.R[:, :, 1].double()  # image y (down) has no horizontal tilt: no roll
        right = cams.R[:, :, 0].double()
        assert right[:, 2].abs().max() < 1e-5 and (up[:, 2] < 0).all()


def test_orbit_cameras_look_at_the_objects():
    for seed in range(4):
        scene = make_scene(seed, "object")
        cams = orbit_cameras(scene, 8, 48, 64, seed=seed)
        uv, z = project(torch.as_tensor(scene.center, dtype=torch.float32)[None].expand(8, 1, 3),
                        cams.fxfycxcy, cams.w2c)
        assert (z > 0).all()
        centre = torch.tensor([32.0, 24.0])
        assert ((uv[:, 0] - centre).abs() < torch.tensor([10.0, 8.0])).all()
        views = render(scene, cams)
        assert views.masks.float().mean() > 0.7  # mostly objects or ground
        objects = render(scene, cams, mask="objects").masks.float().mean((1, 2))
        assert (objects > 0.05).all()
        elevation = torch.rad2deg(torch.asin((cams.centers[:, 2] - float(scene.center[2]))
                                             / (cams.centers - torch.as_tensor(scene.center).float()).norm(dim=-1)))
        assert ((elevation > 15) & (elevation < 55)).all()


def test_roll_and_principal_point_options():
    scene = make_scene(1, "object")
    plain = orbit_cameras(scene, 6, 40, 40)
    assert torch.allclose(plain.fxfycxcy[:, 2:], torch.tensor(20.0))
    rolled = orbit_cameras(scene, 6, 40, 40, roll_deg=10.0, principal_jitter=0.05)
    assert rolled.R[:, 2, 0].abs().max() > 0.01  # image x axis tilts out of the horizontal
    assert (rolled.fxfycxcy[:, 2:] - 20.0).abs().max() > 0.01
    assert torch.allclose(rolled.R[:, :, 2], plain.R[:, :, 2], atol=1e-5)  # roll keeps the viewing direction


def test_sample_scene_is_fixed():
    scene, views = sample_scene(num_views=2, height=32, width=32, supersample=1)
    again, views2 = generate(SAMPLE_SEED, "object", num_views=2, height=32, width=32, arc_deg=90.0)
    assert _signature(scene) == _signature(again) and torch.equal(views.images, views2.images)
    assert len(views) == 2 and views.cameras is not None
