"""The robust bounds of a splat's opaque Gaussians: what an orbit of a PLY without cameras frames."""

import math

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.splat import Gaussians, from_points
from manyview.splat.bounds import opaque_bounds, opaque_centers


def _splat(points, opacity, log_scale=-3.0):
    g = from_points(torch.as_tensor(points, dtype=torch.float32), sh_degree=0, opacity=opacity)
    return g.replace(log_scales=torch.full((len(g), 3), log_scale))


def test_opaque_bounds_ignore_faint_floaters_and_a_few_stragglers():
    gen = torch.Generator().manual_seed(0)
    scene = _splat(torch.rand(2000, 3, generator=gen) * torch.tensor([2.0, 1.0, 0.5]), 0.9)
    floaters = _splat(torch.randn(500, 3, generator=gen) * 50, 0.05)  # many, far, nearly transparent
    stragglers = _splat(torch.randn(20, 3, generator=gen) + 80, 0.9)  # 1 %, opaque, far
    low, high = opaque_bounds(Gaussians.cat([scene, floaters, stragglers]))
    reach = 3 * math.exp(-3.0)  # widened by the Gaussians' three standard deviations
    torch.testing.assert_close(low, torch.full((3,), -reach, dtype=torch.float64), atol=0.06, rtol=0)
    torch.testing.assert_close(high, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64) + reach, atol=0.06, rtol=0)
    assert len(opaque_centers(Gaussians.cat([scene, floaters]))) == 2000  # the floaters are left out


def test_opaque_bounds_of_a_faint_or_tiny_splat():
    # fewer than 16 opaque Gaussians: all of them count (a splat only initialised at opacity 0.1 is somewhere)
    faint = Gaussians.cat([_splat(torch.tensor([[0.0, 0, 0], [4.0, 2, 1]] * 20), 0.1),
                           _splat(torch.tensor([[1.0, 1, 0.5]]), 0.9)])
    low, high = opaque_bounds(faint, quantile=0.0)
    torch.testing.assert_close(high - low, torch.tensor([4.0, 2, 1], dtype=torch.float64) + 6 * math.exp(-3.0))
    # a single Gaussian still has a size: its own reach
    low, high = opaque_bounds(_splat(torch.tensor([[1.0, 2.0, 3.0]]), 0.9, log_scale=0.0))
    torch.testing.assert_close(high - low, torch.full((3,), 6.0, dtype=torch.float64))
    with pytest.raises(ManyviewError, match="no Gaussians"):
        opaque_bounds(Gaussians.empty(sh_degree=0))
    with pytest.raises(ManyviewError, match="opacity threshold"):
        opaque_bounds(faint, min_opacity=1.0)


def test_splat_orbit_follows_the_cameras_when_there_are_any_and_the_box_when_not():
    from manyview.scene import Cameras
    from manyview.splat.bounds import splat_orbit
    from manyview.synth import make_scene, orbit_cameras

    gen = torch.Generator().manual_seed(2)
    splat = _splat(torch.rand(400, 3, generator=gen) * 2 - 1, 0.9)
    cams = orbit_cameras(make_scene(0, "object"), 6, 24, 32, seed=0)
    with_cameras = splat_orbit(splat, 4, cams)
    assert with_cameras.dtype == torch.float32 and with_cameras.image_size.tolist() == [[24, 32]] * 4
    torch.testing.assert_close(with_cameras.c2w, cams.orbit(4).c2w)  # the cameras look at one thing: theirs
    alone = splat_orbit(splat, 3, image_size=(20, 30))
    low, high = opaque_bounds(splat)
    torch.testing.assert_close(alone.c2w, Cameras.orbit_around_box(low, high, 3, (20, 30)).c2w)
    assert alone.image_size.tolist() == [[20, 30]] * 3
