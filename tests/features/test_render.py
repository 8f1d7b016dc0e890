"""Feature rendering (manyview.features.render): the vectorised renderer against the per-ray loop (values and
gradients), a constant field renders to that constant, occlusion, and the helpers."""

from __future__ import annotations

import pytest
import torch

from manyview.features.render import grid_intrinsics, point_radii, render_features, render_features_reference
from manyview.scene import Cameras


def two_cameras(height: int, width: int, dtype=torch.float64) -> Cameras:
    eye = torch.tensor([[0.0, -3.0, 1.0], [2.0, -2.0, 0.5]], dtype=dtype)
    f = torch.tensor([[1.2 * width, 1.2 * width, width / 2, height / 2]], dtype=dtype).expand(2, 4)
    return Cameras.look_at(eye, torch.zeros(2, 3, dtype=dtype), torch.tensor([0, 0, 1.0], dtype=dtype), f,
                           (height, width))


@pytest.fixture
def blobs():
    g = torch.Generator().manual_seed(0)
    P = 10
    return ((torch.rand(P, 3, generator=g) - 0.5).double(), torch.randn(P, 5, generator=g).double(),
            (0.08 + 0.1 * torch.rand(P, generator=g)).double(), (0.3 + 0.7 * torch.rand(P, generator=g)).double())


@pytest.mark.parametrize("normalize", [False, True])
def test_renderer_matches_the_per_ray_loop_in_values_and_gradients(blobs, normalize):
    cams = two_cameras(5, 6)
    inputs = [t.clone().requires_grad_(True) for t in blobs]
    fast = render_features(*inputs, cams.fxfycxcy, cams.c2w, 5, 6, normalize=normalize, chunk=7)  # uneven chunks
    ref = render_features_reference(*inputs, cams.fxfycxcy, cams.c2w, 5, 6, normalize=normalize)
    torch.testing.assert_close(fast[0], ref[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fast[1], ref[1], atol=1e-12, rtol=1e-10)
    assert ref[1].max() > 0.5, "the blobs must overlap the views for the comparison to mean something"
    g = torch.Generator().manual_seed(1)
    wf, wa = torch.randn(fast[0].shape, generator=g).double(), torch.randn(fast[1].shape, generator=g).double()
    grads_fast = torch.autograd.grad((fast[0] * wf).sum() + (fast[1] * wa).sum(), inputs)
    grads_ref = torch.autograd.grad((ref[0] * wf).sum() + (ref[1] * wa).sum(), inputs)
    for name, a, b in zip(("points", "features", "radii", "opacity"), grads_fast, grads_ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)


def dense_wall(n: int = 48, depth: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A square of n x n points beyond the edges of the view of a camera at the origin looking down +z."""
    s = torch.linspace(-1.2, 1.2, n, dtype=torch.float64) * depth
    y, x = torch.meshgrid(s, s, indexing="ij")
    pts = torch.stack((x.reshape(-1), y.reshape(-1), torch.full((n * n,), depth, dtype=torch.float64)), -1)
    return pts, torch.tensor([[8.0, 8.0, 8.0, 8.0]], dtype=torch.float64)


def test_a_constant_feature_field_renders_to_that_constant():
    pts, K = dense_wall()
    c = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    feats = c.expand(len(pts), 3)
    radii, opacity = point_radii(pts, k=4, scale=1.5), torch.ones(len(pts), dtype=torch.float64)
    f, alpha = render_features(pts, feats, radii, opacity, K, torch.eye(4, dtype=torch.float64)[None], 16, 16)
    assert alpha.min() > 0.999  # opaque wall (peak alpha is clamped at 0.99, many blobs overlap)
    torch.testing.assert_close(f, c[None, :, None, None].expand_as(f), atol=5e-3, rtol=0)
    # normalised, the constant comes back exactly wherever anything is hit, opaque or not
    f, alpha = render_features(pts, feats, radii, torch.full_like(opacity, 0.05), K,
                               torch.eye(4, dtype=torch.float64)[None], 16, 16, normalize=True)
    assert alpha.max() < 0.999
    torch.testing.assert_close(f, c[None, :, None, None].expand_as(f), atol=1e-12, rtol=1e-12)


def test_the_nearest_opaque_surface_hides_what_is_behind_it():
    front, K = dense_wall(depth=2.0)
    back, _ = dense_wall(depth=3.0)
    pts = torch.cat((back, front))  # the far wall first: order of the input must not matter
    feats = torch.cat((torch.zeros(len(back), 1), torch.ones(len(front), 1))).double()
    radii = point_radii(pts, k=4, scale=1.5)
    f, _ = render_features(pts, feats, radii, torch.ones(len(pts), dtype=torch.float64), K,
                           torch.eye(4, dtype=torch.float64)[None], 16, 16)
    assert f.min() > 0.99
    # behind the camera: nothing is drawn
    f, alpha = render_features(pts * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), feats, radii,
                               torch.ones(len(pts), dtype=torch.float64), K, torch.eye(4, dtype=torch.float64)[None],
                               16, 16)
    assert alpha.abs().max() == 0 and f.abs().max() == 0


def test_point_radii_and_grid_intrinsics():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0]])
    torch.testing.assert_close(point_radii(pts, k=1), torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(point_radii(pts, k=2, scale=2.0), torch.tensor([4.0, 3.0, 5.0]))
    K = torch.tensor([100.0, 110.0, 64.0, 48.0])
    torch.testing.assert_close(grid_intrinsics(K, (96, 128), (12, 16)), torch.tensor([12.5, 13.75, 8.0, 6.0]))
