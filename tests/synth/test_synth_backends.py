"""The renderer's casters agree with each other and with sphere tracing of the exact distance field."""

import math

import pytest
import torch

from manyview.geometry.rays import pixel_rays
from manyview.synth import make_scene, render, sample_cameras
from manyview.synth.render import cast_batched, cast_loop, pack


def _sphere_trace(scene, origins, dirs, steps=150, tol=1e-6, far=40.0):
    """Reference distance along unit rays by marching the exact distance field (float64); NaN if not converged."""
    t = torch.zeros(dirs.shape[:-1], dtype=torch.float64)
    done = torch.zeros_like(t, dtype=torch.bool)
    for _ in range(steps):
        d = scene.surface_distance(origins + t[..., None] * dirs)
        done = done | (d < tol)
        active = ~done & (t < far)
        if not active.any():
            break
        t = torch.where(active, t + d, t)
    return torch.where(done, t, math.nan)


@pytest.mark.parametrize("kind", ["object", "room"])
def test_depth_matches_sphere_tracing(kind):
    scene = make_scene(4, kind)
    cams = sample_cameras(scene, 2, 12, 16, seed=2)
    views = render(scene, cams)
    o, d = pixel_rays(cams.fxfycxcy.double(), cams.c2w.double(), 12, 16, normalize=False)
    t = _sphere_trace(scene, o, torch.nn.functional.normalize(d, dim=-1)) / d.norm(dim=-1)  # -> z-depth
    ok = torch.isfinite(t)
    assert ok.float().mean() > 0.6
    # Where the march converged it stopped at the first surface along the ray: the rendered depth.
    assert (views.depths.double()[ok] - t[ok]).abs().max() < 1e-4
    assert views.masks[ok].all()


@pytest.mark.parametrize("kind", ["object", "room"])
def test_batched_and_loop_casters_agree(kind):
    scene = make_scene(6, kind)
    cams = sample_cameras(scene, 2, 24, 32)
    packed = pack(scene)
    _, dirs = pixel_rays(cams.fxfycxcy, cams.c2w, 24, 32, normalize=False)
    for i in range(2):
        d = dirs[i].reshape(-1, 3)
        tb, pb = cast_batched(packed, cams.centers[i], d)
        tl, pl = cast_loop(packed, cams.centers[i], d)
        assert torch.equal(torch.isfinite(tb), torch.isfinite(tl))
        hit = torch.isfinite(tb)
        assert (pb == pl)[hit].float().mean() > 0.99
        assert torch.allclose(tb[hit], tl[hit], rtol=1e-5)


@pytest.mark.parametrize("kind", ["object", "room"])
@pytest.mark.parametrize("supersample", [1, 2])
def test_numba_kernel_matches_torch_reference(kind, supersample):
    scene = make_scene(2, kind)
    cams = sample_cameras(scene, 2, 30, 40, seed=5, principal_jitter=0.05)
    fast = render(scene, cams, backend="numba", supersample=supersample)
    ref = render(scene, cams, backend="batched", supersample=supersample)
    same = fast.masks == ref.masks
    assert same.float().mean() > 0.995
    both = fast.masks & ref.masks
    close_depth = (fast.depths - ref.depths).abs() < 1e-4 * ref.depths + 1e-5
    assert close_depth[both].float().mean() > 0.99  # the rest: pixels on an edge between two primitives
    normal_ok = ((fast.normals - ref.normals).abs().amax(1) < 1e-4)[both]
    assert normal_ok.float().mean() > 0.99
    colour_ok = (fast.images - ref.images).abs().amax(1) < 2e-3
    assert colour_ok.float().mean() > 0.98  # texture cell boundaries can fall either way in float32 / float64
    assert (fast.images - ref.images).abs().mean() < 2e-3
    if kind == "room":
        assert fast.masks.all()
