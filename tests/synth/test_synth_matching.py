"""Synthetic views carry texture that a feature matcher can use: SIFT finds many correct matches in a pair."""

import cv2
import numpy as np
import pytest
import torch

from manyview.geometry.projection import project, unproject
from manyview.synth import make_scene, orbit_cameras, render


def _grey(image: torch.Tensor) -> np.ndarray:
    return (image.mean(0).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sift_matches_between_neighbouring_orbit_views_are_many_and_correct(seed):
    scene = make_scene(seed, "object")
    cams = orbit_cameras(scene, 24, 256, 256, seed=0)[:2]  # neighbours on a 24-view orbit: ~15 degrees apart
    views = render(scene, cams, supersample=2)
    sift = cv2.SIFT_create()
    (ka, da), (kb, db) = (sift.detectAndCompute(_grey(im), None) for im in views.images)
    assert len(ka) > 200 and len(kb) > 200
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in pairs if m.distance < 0.75 * n.distance]
    pa = torch.tensor([ka[m.queryIdx].pt for m in good], dtype=torch.float64)
    pb = torch.tensor([kb[m.trainIdx].pt for m in good], dtype=torch.float64)
    # Ground truth: lift each keypoint of view A with its depth and project it into view B.
    # (OpenCV keypoints put pixel centres at integers; the cameras at +0.5.)
    col, row = pa[:, 0].round().long(), pa[:, 1].round().long()
    depth = views.depths[0, row, col].double()
    valid = depth > 0
    world = unproject(pa + 0.5, depth, cams.fxfycxcy[0].double(), cams.c2w[0].double())
    uv, _ = project(world, cams.fxfycxcy[1].double(), cams.w2c[1].double())
    error = (uv - 0.5 - pb).norm(dim=-1)
    correct = valid & (error < 3.0)
    assert int(correct.sum()) >= 100, (len(good), int(correct.sum()))
    assert correct.float().mean() > 0.6
