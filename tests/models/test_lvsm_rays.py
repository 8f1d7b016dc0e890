"""LVSM conventions: rays, Plücker channels, patch order and pose normalisation, checked by hand and by property."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.geometry.rotation import random_rotation
from manyview.geometry.transforms import rigid
from manyview.models.lvsm import (normalize_cameras, normalize_poses, patch_tokenizer, pose_normalization, posed_images,
                                  ray_conditioning, view_rays)
from manyview.scene import Cameras

# fx=2, fy=4, cx=cy=1 on a 2x2 image; camera rotated 90 degrees about z (R (a, b, c) = (-b, a, c)) at (1, 2, 3)
FXFYCXCY = torch.tensor([2.0, 4.0, 1.0, 1.0], dtype=torch.float64)
C2W = rigid(torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
            torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_rays_and_plucker_reproduce_two_hand_computed_pixels():
    o, d = view_rays(FXFYCXCY, C2W, 2, 2)  # (3, H, W)
    plucker = ray_conditioning(FXFYCXCY, C2W, 2, 2)  # (6, H, W)
    norm = math.sqrt(0.125**2 + 0.25**2 + 1)
    # pixel row 0, col 0: centre (0.5, 0.5) -> camera ((0.5-1)/2, (0.5-1)/4, 1) = (-0.25, -0.125, 1)
    #   -> world (0.125, -0.25, 1); moment (1, 2, 3) x (0.125, -0.25, 1) = (2.75, -0.625, -0.5)
    # pixel row 1, col 0: centre (0.5, 1.5) -> camera (-0.25, 0.125, 1) -> world (-0.125, -0.25, 1);
    #   moment (1, 2, 3) x (-0.125, -0.25, 1) = (2.75, -1.375, 0)
    expected = {(0, 0): ([0.125, -0.25, 1.0], [2.75, -0.625, -0.5]),
                (1, 0): ([-0.125, -0.25, 1.0], [2.75, -1.375, 0.0])}
    for (row, col), (direction, moment) in expected.items():
        direction, moment = torch.tensor(direction, dtype=torch.float64) / norm, torch.tensor(moment) / norm
        torch.testing.assert_close(d[:, row, col], direction)
        torch.testing.assert_close(o[:, row, col], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        torch.testing.assert_close(plucker[:3, row, col], moment.double())  # moment first
        torch.testing.assert_close(plucker[3:, row, col], direction)  # then direction


def test_input_channels_and_patch_order():
    images = torch.rand(1, 1, 3, 2, 2, dtype=torch.float64)
    posed = posed_images(images, FXFYCXCY[None, None], C2W[None, None])
    assert posed.shape == (1, 1, 9, 2, 2)
    torch.testing.assert_close(posed[0, 0, :3], 2 * images[0, 0] - 1)
    torch.testing.assert_close(posed[0, 0, 3:], ray_conditioning(FXFYCXCY, C2W, 2, 2))
    # patches row-major over the image, each flattened (patch row, patch col, channel)
    p, c = 4, 5
    x = torch.randn(2, 3, c, 8, 12)
    tokens = patch_tokenizer(c, p, 7)[0](x)
    assert tokens.shape == (2, 3, 6, p * p * c)
    for hh, ww, ph, pw, ch in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 4), (0, 1, 2, 3, 1)]:
        assert tokens[1, 2, hh * 3 + ww, (ph * p + pw) * c + ch] == x[1, 2, ch, hh * p + ph, ww * p + pw]


def _poses(seed, v):
    g = torch.Generator().manual_seed(seed)
    R = random_rotation(v, generator=g, dtype=torch.float64)
    return rigid(R, torch.randn(v, 3, generator=g, dtype=torch.float64) * 5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(2, 6), scale=st.floats(0.05, 20.0))
def test_pose_normalisation_removes_the_world_frame_and_scale(seed, v, scale):
    c2w = _poses(seed, v)
    normalized = normalize_poses(c2w, 1.35)
    centers = normalized[:, :3, 3]
    assert torch.allclose(centers.abs().max(), torch.tensor(1 / 1.35, dtype=torch.float64))
    assert torch.allclose(centers.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    forward = normalized[:, :3, 2].mean(0)
    assert torch.allclose(forward / forward.norm(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9)
    assert abs(normalized[:, :3, 1].mean(0)[0]) < 1e-9  # mean down axis has no x component
    # invariant to any similarity of the world
    g = torch.Generator().manual_seed(seed + 1)
    T = rigid(_poses(seed + 2, 1)[0, :3, :3], torch.randn(3, generator=g, dtype=torch.float64))
    moved = T @ c2w
    moved = rigid(moved[:, :3, :3], moved[:, :3, 3] * scale)
    torch.testing.assert_close(normalize_poses(moved, 1.35), normalized)


def test_pose_normalisation_is_batched_applies_to_cameras_and_survives_one_camera():
    c2w = torch.stack([_poses(1, 4), _poses(2, 4)])
    normalized = normalize_poses(c2w)
    torch.testing.assert_close(normalized[1], normalize_poses(c2w[1]))
    T, scale = pose_normalization(c2w)
    cams = Cameras(torch.ones(2, 4, 4, dtype=torch.float64), c2w, (8, 8))
    similarity = rigid(T[:, :3, :3], T[:, :3, 3] * scale[:, None])[:, None]
    torch.testing.assert_close(cams.transform(similarity, scale[:, None, None, None]).c2w, normalized)
    torch.testing.assert_close(normalize_cameras(cams).c2w, normalized)
    assert normalize_cameras(cams).fxfycxcy is cams.fxfycxcy
    single = normalize_poses(_poses(3, 1))
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single[0], torch.eye(4, dtype=torch.float64))
