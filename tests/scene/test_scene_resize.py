"""The one resize-and-crop: plan, cameras, per-pixel maps and images move together, in memory as from files."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.errors import ManyviewError
from manyview.io.image_writers import write_image
from manyview.io.images import ImageLoadPolicy, load_images
from manyview.scene import Cameras, Views, apply_to_cameras, resize_cameras, resize_views
from manyview.scene.resize import ImageTransform, plan_resize_and_crop


def _coordinate_views(h: int, w: int) -> Views:
    """One view whose pixels say where they are: image channels u / W and v / H (linear ramps), normals (u, v, 0)
    and depth 1000 u + v (which source pixel a nearest sample took), a mask of the left half."""
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cams = Cameras(torch.tensor([[50.0, 60.0, w / 2 + 3, h / 2 - 2]]), torch.eye(4)[None], (h, w))
    return Views(images=torch.stack([u / w, v / h, torch.full_like(u, 0.5)])[None], cameras=cams,
                 depths=(1000 * u + v)[None], masks=(u < w / 2)[None],
                 normals=torch.stack([u, v, torch.zeros_like(u)])[None], names=["a.png"])


def _source_coordinates(before: Cameras, after: Cameras, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel centre of the new (h, w) image lies in the original, by the two cameras' intrinsics."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    f0, f1 = before.fxfycxcy[0].double(), after.fxfycxcy[0].double()
    return (u - f1[2]) / f1[0] * f0[0] + f0[2], (v - f1[3]) / f1[1] * f0[1] + f0[3]


@pytest.mark.parametrize("target,crop", [((20, 20), "center"), ((90, 90), "center"), ((25, 30), "none"),
                                         ((40, 50), "center"), ((13, 61), "center")])
def test_images_maps_and_cameras_stay_in_register(target, crop):
    views = _coordinate_views(40, 60)
    out = resize_views(views, *target, crop=crop)
    th, tw = target
    assert out.images.shape == (1, 3, th, tw) and out.cameras.image_size.tolist() == [[th, tw]]
    assert out.names == ["a.png"] and out.depths.shape == out.masks.shape == (1, th, tw)
    xs, ys = _source_coordinates(views.cameras, out.cameras, th, tw)
    # images: a linear ramp comes through resampling nearly unchanged away from the borders (a sampled triangle
    # filter at a non-integer scale moves it by a few hundredths of a pixel; misregistration is >= 0.5 px)
    m = 3
    inner = (slice(m, th - m), slice(m, tw - m))
    torch.testing.assert_close(out.images[0, 0].double()[inner] * 60, xs[inner], atol=0.1, rtol=0)
    torch.testing.assert_close(out.images[0, 1].double()[inner] * 40, ys[inner], atol=0.1, rtol=0)
    # maps: every pixel took the source pixel nearest to where it lies, the same one for depth, mask and normals
    nu, nv = out.normals[0, 0].double(), out.normals[0, 1].double()
    assert (nu - xs).abs().max() <= 0.5 + 1e-4 and (nv - ys).abs().max() <= 0.5 + 1e-4
    torch.testing.assert_close(out.depths[0], 1000 * out.normals[0, 0] + out.normals[0, 1])
    assert out.masks.dtype == torch.bool and torch.equal(out.masks[0], out.normals[0, 0] < 30)


def test_a_pure_crop_keeps_pixels_exactly_and_the_same_size_is_left_alone():
    views = _coordinate_views(40, 60)
    assert resize_views(views, 40, 60) is views
    out = resize_views(views, 40, 50)
    torch.testing.assert_close(out.images, views.images[..., 5:55], atol=0, rtol=0)
    torch.testing.assert_close(out.depths, views.depths[..., 5:55], atol=0, rtol=0)
    torch.testing.assert_close(out.cameras.fxfycxcy, views.cameras.fxfycxcy - torch.tensor([0, 0, 5.0, 0]))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 500), w=st.integers(1, 500), th=st.integers(1, 300), tw=st.integers(1, 300))
def test_the_plan_covers_the_target_keeps_the_aspect_and_centres_the_crop(h, w, th, tw):
    (rh, rw), (top, left, ch, cw) = plan_resize_and_crop((h, w), (th, tw), "center")
    assert (ch, cw) == (th, tw) and rh >= th and rw >= tw
    assert top + th <= rh and left + tw <= rw
    assert abs((rh - th) - 2 * top) <= 1 and abs((rw - tw) - 2 * left) <= 1
    s = max(th / h, tw / w)  # the scale that covers; each side rounds to the nearest pixel
    assert abs(rh - h * s) <= 0.5 + 1e-9 or rh == th
    assert abs(rw - w * s) <= 0.5 + 1e-9 or rw == tw
    assert plan_resize_and_crop((h, w), (th, tw), "none") == ((th, tw), (0, 0, th, tw))


def test_bad_plans_are_refused():
    with pytest.raises(ManyviewError, match="cannot resize"):
        plan_resize_and_crop((10, 10), (0, 5))
    with pytest.raises(ValueError, match="crop"):
        plan_resize_and_crop((10, 10), (5, 5), "middle")


def test_resize_cameras_handles_mixed_sizes_as_each_image_alone():
    small = Cameras(torch.tensor([[50.0, 52, 30, 20], [40, 40, 31, 19]]), torch.eye(4).expand(2, 4, 4), (40, 60))
    big = Cameras(small.fxfycxcy * 2, small.c2w, (80, 120))  # the same cameras for images twice the size
    other = Cameras(torch.tensor([[30.0, 30, 16, 16]]), torch.eye(4)[None], (32, 32))
    mixed = Cameras.cat([small[:1], big[1:], other])
    out = resize_cameras(mixed, 24, 24)
    assert out.image_size.tolist() == [[24, 24]] * 3
    torch.testing.assert_close(out[:2].fxfycxcy, resize_cameras(small, 24, 24).fxfycxcy)
    torch.testing.assert_close(out[2:].fxfycxcy, ImageTransform.fitting((32, 32), (24, 24)).apply(other).fxfycxcy)
    torch.testing.assert_close(out.c2w, mixed.c2w)


def test_resizing_in_memory_matches_loading_the_files(tmp_path):
    """The image readers and resize_views share one plan: the same cameras, and (for smooth images) the same
    pixels up to the resampling filter."""
    views = _coordinate_views(40, 60)
    write_image(tmp_path / "a.png", views.images[0])
    for size, crop in (((20, 20), "center"), ((30, 24), "none")):
        loaded, transforms = load_images(tmp_path, ImageLoadPolicy(size=size, crop=crop))
        resized = resize_views(views, *size, crop=crop)
        torch.testing.assert_close(apply_to_cameras(views.cameras, transforms).fxfycxcy, resized.cameras.fxfycxcy)
        inner = (..., slice(3, size[0] - 3), slice(3, size[1] - 3))
        torch.testing.assert_close(loaded.images[inner], resized.images[inner], atol=6 / 255, rtol=0)


def test_camera_sizes_that_differ_from_the_image_are_rescaled_only_with_the_same_aspect():
    t = ImageTransform.fitting((40, 60), (20, 20), source="img.png")
    full = Cameras(torch.tensor([[100.0, 100, 60, 40]]), torch.eye(4)[None], (80, 120))  # COLMAP on 2x photos
    half = Cameras(full.fxfycxcy / 2, full.c2w, (40, 60))
    torch.testing.assert_close(t.apply(full).fxfycxcy, t.apply(half).fxfycxcy)
    with pytest.raises(ManyviewError, match="img.png.*aspect"):
        t.apply(Cameras(full.fxfycxcy, full.c2w, (80, 80)))
