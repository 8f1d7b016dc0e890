"""Ground truth of the synthetic renderer is exact: depth, normals and masks agree with the scene's geometry."""

from dataclasses import replace
from functools import lru_cache

import pytest
import torch

from manyview.geometry.projection import depth_to_pointmap, project
from manyview.geometry.rays import pixel_grid, pixel_rays
from manyview.synth import make_scene, orbit_cameras, render, sample_cameras, walkthrough_cameras


@lru_cache
def _views(kind: str, seed: int = 0, height: int = 37, width: int = 53):
    scene = make_scene(seed, kind)
    cams = sample_cameras(scene, 3, height, width, seed=1, principal_jitter=0.05)
    return scene, render(scene, cams)


@pytest.mark.parametrize("kind", ["object", "room"])
def test_unprojected_depth_lies_on_surfaces_and_reprojects(kind):
    scene, views = _views(kind)
    cams, depth, valid = views.cameras, views.depths, views.masks
    points = depth_to_pointmap(depth.double(), cams.fxfycxcy.double(), cams.c2w.double())  # (N, H, W, 3)
    dist = scene.surface_distance(points[valid])
    assert valid.float().mean() > 0.5
    assert dist.max() < 1e-4 * depth[valid].double().max() + 1e-5, dist.max()
    uv, z = project(points.flatten(1, 2), cams.fxfycxcy.double(), cams.w2c.double())
    grid = pixel_grid(views.height, views.width, 0.5, torch.float64).reshape(-1, 2).expand_as(uv)
    flat_valid = valid.flatten(1)
    assert (uv - grid)[flat_valid].abs().max() < 1e-3
    assert torch.allclose(z[flat_valid], depth.double().flatten(1)[flat_valid], rtol=1e-6)


@pytest.mark.parametrize("kind", ["object", "room"])
def test_masks_and_missing_geometry(kind):
    scene, views = _views(kind)
    assert views.masks.dtype == torch.bool
    assert torch.equal(views.masks, views.depths > 0)
    miss = ~views.masks
    assert views.normals.permute(0, 2, 3, 1)[miss].abs().sum() == 0
    objects = render(scene, views.cameras, mask="objects").masks
    assert bool((objects <= views.masks).all()) and objects.any() and (objects != views.masks).any()
    if kind == "room":
        assert views.masks.all()  # a closed room: every ray hits a wall


def test_normals_are_unit_face_the_camera_and_match_the_distance_gradient():
    scene, views = _views("object", height=48, width=64)
    cams, valid = views.cameras, views.masks
    n = views.normals.permute(0, 2, 3, 1).double()
    assert torch.allclose(n[valid].norm(dim=-1), torch.ones(int(valid.sum()), dtype=torch.float64), atol=1e-5)
    _, dirs = pixel_rays(cams.fxfycxcy.double(), cams.c2w.double(), views.height, views.width)
    assert ((n * dirs).sum(-1)[valid] < 0).all()
    # Just off the surface, on the camera's side, the distance field grows along the camera-facing normal.
    points = depth_to_pointmap(views.depths.double(), cams.fxfycxcy.double(), cams.c2w.double())
    off = (points - 1e-3 * torch.nn.functional.normalize(dirs, dim=-1))[valid]
    h = 1e-6
    grad = torch.stack([(scene.surface_distance(off + h * e) - scene.surface_distance(off - h * e)) / (2 * h)
                        for e in torch.eye(3, dtype=torch.float64)], -1)
    agree = (grad * n[valid]).sum(-1) > 0.99
    assert agree.float().mean() > 0.95, agree.float().mean()

def test_any_resolution_and_intrinsics():
    scene = make_scene(5, "object")
    for height, width in [(17, 29), (64, 32), (90, 160)]:
        cams = orbit_cameras(scene, 2, height, width, seed=3, fov_deg=(30.0, 90.0), principal_jitter=0.1,
                             per_view_intrinsics=True)
        views = render(scene, cams)
        assert views.images.shape == (2, 3, height, width) and views.depths.shape == (2, height, width)
        assert views.normals.shape == (2, 3, height, width) and views.masks.shape == (2, height, width)
        assert 0 <= views.images.min() and views.images.max() <= 1
        points = depth_to_pointmap(views.depths.double(), cams.fxfycxcy.double(), cams.c2w.double())
        assert scene.surface_distance(points[views.masks]).max() < 1e-3
    fov = torch.rad2deg(2 * torch.atan(cams.width / (2 * cams.fx)))  # widest side of the last, wide images
    assert ((fov >= 30 - 1e-3) & (fov <= 90 + 1e-3)).all() and fov[0] != fov[1]


def _gradient_energy(images: torch.Tensor) -> float:
    grey = images.mean(1)
    return float((grey[:, :, 1:] - grey[:, :, :-1]).abs().mean() + (grey[:, 1:] - grey[:, :-1]).abs().mean())


def test_images_carry_texture():
    for kind in ("object", "room"):
        scene, views = _views(kind, seed=2, height=96, width=128)
        # The same scene with every surface a flat colour: only silhouettes and shading create gradients.
        flat = [replace(p, material=replace(p.material, colors=(p.material.colors[1],) * 3, noise=0.0))
                for p in scene.primitives]
        plain = render(replace(scene, primitives=tuple(flat)), views.cameras)
        energy = _gradient_energy(views.images)
        assert energy > 0.03 and energy > 4 * _gradient_energy(plain.images), (kind, energy)
        assert views.images.mean(1).std() > 0.06

def test_supersampling_changes_colour_only():
    scene = make_scene(1, "object")
    cams = orbit_cameras(scene, 2, 40, 56, seed=0)
    one, two = render(scene, cams), render(scene, cams, supersample=2)
    assert torch.equal(one.depths, two.depths) and torch.equal(one.masks, two.masks)
    assert torch.equal(one.normals, two.normals)
    diff = (one.images - two.images).abs()
    assert 0 < diff.mean() < 0.1  # smoother, not different
    # Anti-aliasing lowers the high-frequency energy.
    energy = lambda im: (im[..., 1:] - im[..., :-1]).abs().mean()  # noqa: E731
    assert energy(two.images) < energy(one.images)


def test_pixel_noise_is_seeded():
    scene = make_scene(1, "object")
    cams = orbit_cameras(scene, 1, 24, 24)
    clean = render(scene, cams).images
    a, b = render(scene, cams, noise_std=0.05, seed=3).images, render(scene, cams, noise_std=0.05, seed=3).images
    c = render(scene, cams, noise_std=0.05, seed=4).images
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    assert 0.02 < (a - clean).abs().mean() < 0.06


def test_bad_requests_raise():
    scene = make_scene(0, "object")
    cams = orbit_cameras(scene, 2, 16, 16)
    with pytest.raises(ValueError):
        render(scene, cams, supersample=0)
    with pytest.raises(ValueError):
        render(scene, cams, mask="sky")
    with pytest.raises(ValueError):
        render(scene, cams, backend="opengl")
    with pytest.raises(ValueError):
        walkthrough_cameras(scene, 2, 16, 16)
