"""Functions of a set of camera poses: look-at, LVSM's pose normalisation, scene centre, vertical and orbits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.errors import ManyviewError
from manyview.geometry.poses import (apply_pose_normalization, invert_pose_normalization, look_at, normalize_poses,
                                     orbit_poses, pose_normalization, scene_center, up_direction)
from manyview.geometry.rotation import random_rotation
from manyview.geometry.transforms import rigid
from manyview.scene import Cameras

Z_UP = torch.tensor([0.0, 0, 1], dtype=torch.float64)


def _poses(seed, v):
    g = torch.Generator().manual_seed(seed)
    R = random_rotation(v, generator=g, dtype=torch.float64)
    return rigid(R, torch.randn(v, 3, generator=g, dtype=torch.float64) * 5)


def _ring(seed: int, v: int, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """V roll-free cameras around ``center`` at jittered azimuths, heights and distances, all looking at it (for
    V >= 3 their x axes span the horizontal plane)."""
    g = torch.Generator().manual_seed(seed)
    center = torch.randn(3, generator=g, dtype=torch.float64) * 3 if center is None else center
    jitter = 0.3 * (torch.rand(v, generator=g, dtype=torch.float64) - 0.5)  # +-15 % of the spacing
    azimuth = (torch.arange(v) + jitter) * 2 * math.pi / v
    distance = 2 + 3 * torch.rand(v, generator=g, dtype=torch.float64)
    height = 0.5 + torch.rand(v, generator=g, dtype=torch.float64)
    eyes = center + torch.stack([distance * torch.cos(azimuth), distance * torch.sin(azimuth), height], -1)
    return look_at(eyes, center, Z_UP), center


# --------------------------------------------------------------------------------------------- look-at
def test_look_at_is_a_roll_free_rotation_facing_the_target():
    eye = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 1.0]], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    c2w = look_at(eye, target, Z_UP)
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(c2w[:, :3, 3], eye)
    torch.testing.assert_close(R[:, :, 2], torch.nn.functional.normalize(target - eye, dim=-1))
    assert R[:, 2, 0].abs().max() < 1e-12  # x axis horizontal: no roll
    assert R[:, 2, 1].max() < 0  # image down points down in the world
    # Cameras.look_at is this function plus intrinsics
    cams = Cameras.look_at(eye, target, Z_UP, torch.tensor([10.0, 10, 4, 4], dtype=torch.float64), (8, 8))
    torch.testing.assert_close(cams.c2w, c2w)


# --------------------------------------------------------------------------------------------- normalisation
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


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(1, 6), factor=st.floats(0.5, 3.0))
def test_pose_normalisation_is_idempotent_and_invertible(seed, v, factor):
    c2w = _poses(seed, v)
    T, scale = pose_normalization(c2w, factor)
    normalized = apply_pose_normalization(c2w, T, scale)
    torch.testing.assert_close(normalized, normalize_poses(c2w, factor))
    # normalised poses are their own average frame at scale 1: normalising again changes nothing
    torch.testing.assert_close(normalize_poses(normalized, factor), normalized, atol=1e-9, rtol=1e-9)
    # and the similarity can be undone, for these cameras and for others (render targets) alike
    torch.testing.assert_close(invert_pose_normalization(normalized, T, scale), c2w)
    others = _poses(seed + 7, 3)
    torch.testing.assert_close(invert_pose_normalization(apply_pose_normalization(others, T, scale), T, scale),
                               others)


def test_pose_normalisation_is_batched_matches_cameras_transform_and_survives_one_camera():
    c2w = torch.stack([_poses(1, 4), _poses(2, 4)])
    normalized = normalize_poses(c2w)
    torch.testing.assert_close(normalized[1], normalize_poses(c2w[1]))
    T, scale = pose_normalization(c2w)
    cams = Cameras(torch.ones(2, 4, 4, dtype=torch.float64), c2w, (8, 8))
    similarity = rigid(T[:, :3, :3], T[:, :3, 3] * scale[:, None])[:, None]
    torch.testing.assert_close(cams.transform(similarity, scale[:, None, None, None]).c2w, normalized)
    single = normalize_poses(_poses(3, 1))
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single[0], torch.eye(4, dtype=torch.float64))


# --------------------------------------------------------------------------------------------- centre, vertical
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(3, 8))
def test_cameras_looking_at_a_point_find_it_and_the_vertical(seed, v):
    c2w, center = _ring(seed, v)
    torch.testing.assert_close(scene_center(c2w), center)
    torch.testing.assert_close(up_direction(c2w), Z_UP)
    # the same in float32 (computed in float64 inside, returned in the input's dtype)
    assert scene_center(c2w.float()).dtype == torch.float32
    torch.testing.assert_close(scene_center(c2w.float()), center.float(), atol=1e-4, rtol=1e-4)


def test_scene_statistics_are_batched():
    rings = [_ring(s, 5) for s in range(3)]
    c2w = torch.stack([r[0] for r in rings])
    torch.testing.assert_close(scene_center(c2w), torch.stack([r[1] for r in rings]))
    torch.testing.assert_close(up_direction(c2w), Z_UP.expand(3, 3))
    orbits = orbit_poses(c2w, 4)
    assert orbits.shape == (3, 4, 4, 4)
    for i in range(3):
        torch.testing.assert_close(orbits[i], orbit_poses(c2w[i], 4))


def test_up_direction_falls_back_to_the_mean_up_axis_when_x_axes_are_parallel():
    # two cameras facing each other: their x axes are antiparallel, so the horizontal plane is not determined
    eyes = torch.tensor([[2.0, 0, 1], [-2.0, 0, 1]], dtype=torch.float64)
    c2w = look_at(eyes, torch.zeros(3, dtype=torch.float64), Z_UP)
    mean_up = torch.nn.functional.normalize(-c2w[:, :3, 1].mean(0), dim=0)
    torch.testing.assert_close(up_direction(c2w), mean_up)
    assert up_direction(c2w) @ Z_UP > 0.8


def test_scene_center_falls_back_for_parallel_views():
    eyes = torch.tensor([[0.0, 0, 0], [0.5, 0, 0]], dtype=torch.float64)
    c2w = rigid(torch.eye(3, dtype=torch.float64).expand(2, 3, 3), eyes)
    torch.testing.assert_close(scene_center(c2w), torch.tensor([0.25, 0, 0.5], dtype=torch.float64))  # ahead
    torch.testing.assert_close(scene_center(c2w[:1]), torch.tensor([0.0, 0, 1], dtype=torch.float64))  # 1 unit
    assert torch.isfinite(orbit_poses(c2w, 3)).all()
    # cameras whose axes meet behind them: the point ahead of them is used instead
    away = look_at(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
                   torch.tensor([[2.0, 0, 0], [0, 2.0, 0]], dtype=torch.float64), Z_UP)
    point = scene_center(away)
    assert (((point - away[:, :3, 3]) * away[:, :3, 2]).sum(-1) > 0).all()


# --------------------------------------------------------------------------------------------- orbits
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(3, 6), n=st.integers(1, 12))
def test_an_orbit_circles_the_vertical_through_the_mean_centre_looking_at_the_scene_centre(seed, v, n):
    c2w, center = _ring(seed, v)
    orbit = orbit_poses(c2w, n)
    eyes = orbit[:, :3, 3]
    torch.testing.assert_close(eyes[0], c2w[:, :3, 3].mean(0))  # the circle passes through the mean centre
    radial = (eyes - center)[:, :2]
    torch.testing.assert_close(radial.norm(dim=-1), radial[0].norm().expand(n))  # a circle around the vertical
    torch.testing.assert_close(eyes[:, 2], eyes[0, 2].expand(n))
    to_center = torch.nn.functional.normalize(center - eyes, dim=-1)
    torch.testing.assert_close(orbit[:, :3, 2], to_center)  # every camera looks at the centre
    assert orbit[:, 2, 0].abs().max() < 1e-9  # without roll
    angles = torch.atan2(radial[:, 1], radial[:, 0])
    steps = torch.remainder(angles.roll(-1) - angles, 2 * math.pi)
    if n > 1:  # evenly spaced
        torch.testing.assert_close(steps, torch.full((n,), 2 * math.pi / n, dtype=torch.float64))


def test_orbit_of_cameras_keeps_the_first_intrinsics():
    c2w, center = _ring(3, 4)
    f = torch.tensor([[30.0, 31, 16, 15], [40, 40, 16, 16], [50, 50, 16, 16], [60, 60, 16, 16]], dtype=torch.float64)
    cams = Cameras(f, c2w, (32, 30))
    orbit = cams.orbit(6)
    assert orbit.shape == (6,) and orbit.dtype == torch.float64
    torch.testing.assert_close(orbit.c2w, orbit_poses(c2w, 6))
    torch.testing.assert_close(orbit.fxfycxcy, f[0].expand(6, 4))
    assert orbit.image_size.tolist() == [[32, 30]] * 6


def test_no_orbit_without_a_circle_or_cameras():
    # four cameras above the scene looking down at it: their mean centre is on the vertical axis, no circle
    above = torch.tensor([[0.5, 0, 3], [-0.5, 0, 3], [0, 0.5, 3], [0, -0.5, 3]], dtype=torch.float64)
    down = look_at(above, torch.zeros(3, dtype=torch.float64), Z_UP)
    torch.testing.assert_close(up_direction(down), Z_UP)
    with pytest.raises(ManyviewError, match="no circle"):
        orbit_poses(down, 4)
    with pytest.raises(ManyviewError, match="at least one camera"):
        orbit_poses(_ring(0, 3)[0], 0)
