"""render(): argument checking, backend choice and the shapes of what comes back."""

from __future__ import annotations

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat import render
from manyview.splat.render import choose_backend


def test_output_layout(scene, cameras):
    g, cams = scene(n=12, seed=0).to(torch.float32), cameras(2).to(torch.float32)
    out = render(g, cams)
    assert out.rgb.shape == (2, 3, 37, 53) and out.alpha.shape == out.depth.shape == (2, 37, 53)
    assert out.means2d.shape == (2, 12, 2) and out.radii.shape == (2, 12, 2)
    single = render(g, cams[0])
    torch.testing.assert_close(single.rgb, out.rgb[:1])
    grid = Cameras(cams.fxfycxcy.reshape(1, 2, 4), cams.c2w.reshape(1, 2, 4, 4), cams.image_size.reshape(1, 2, 2))
    torch.testing.assert_close(render(g, grid).rgb, out.rgb)


def test_backend_choice(scene):
    g = scene(n=3)
    assert choose_backend(g.to(torch.float32)) == "cpu"
    assert choose_backend(g) == "reference"  # float64 asks for exactness
    with pytest.raises(ManyviewError, match="unknown render backend"):
        choose_backend(g, "opengl")


def test_reference_output_follows_the_input_dtype(scene, cameras):
    out = render(scene(n=5).to(torch.float32), cameras(1), backend="reference")
    assert out.rgb.dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="mip"), "unknown render mode"),
    (dict(sh_degree=3), "sh_degree 3 is not available"),
    (dict(background=torch.zeros(4)), "background must be"),
    (dict(tile_size=0), "tile_size must be positive"),
    (dict(near=0.0), "need 0 < near < far"),
])
def test_bad_arguments(scene, cameras, kwargs, match):
    with pytest.raises(ManyviewError, match=match):
        render(scene(n=4, degree=2).to(torch.float32), cameras(2).to(torch.float32), **kwargs)


def test_cameras_must_share_an_image_size(scene, cameras):
    a, b = cameras(1, height=20, width=30), cameras(1, height=21, width=30)
    with pytest.raises(ManyviewError, match="share an image size"):
        render(scene(n=4).to(torch.float32), Cameras.cat([a, b]).to(torch.float32))
