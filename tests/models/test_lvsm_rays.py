"""LVSM conventions: rays, Plücker channels and patch order, checked by hand (pose normalisation:
tests/geometry/test_geometry_poses.py)."""

import math

import torch

from manyview.geometry.transforms import rigid
from manyview.models.lvsm_base import patch_tokenizer, posed_images, ray_conditioning, view_rays

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
