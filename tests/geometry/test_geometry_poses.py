"""Functions of a set of camera poses: look-at, LVSM's pose normalisation, scene centre, vertical and orbits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.errors import ManyviewError
from manyview.geometry.poses import (apply_pose_normalization, box_orbit_poses, invert_pose_normalization, look_at,
                                     normalize_poses, orbit_poses, point_bounds, pose_normalization, scene_center,
                                     up_direction)
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
    # cameras whose axes meet behind them (turned 10 degrees apart): the point ahead of them is used instead
    away = look_at(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64),
                   torch.tensor([[-math.sin(0.09), math.cos(0.09), 0], [1 + math.sin(0.09), math.cos(0.09), 0]],
                                dtype=torch.float64), Z_UP)
    point = scene_center(away)
    assert (((point - away[:, :3, 3]) * away[:, :3, 2]).sum(-1) > 0).all()
    # ... or, for such forward-facing cameras, the middle of the points they see when those are given
    seen = torch.tensor([[0.5, 6.0, 0.2]], dtype=torch.float64) + torch.randn(
        200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    seen[:5] = 1e3  # a few stray points do not move it
    torch.testing.assert_close(scene_center(away, seen), torch.tensor([0.5, 6.0, 0.2], dtype=torch.float64),
                               atol=0.1, rtol=0)
    # cameras meeting where they look ignore the points
    ring, center = _ring(4, 6)
    torch.testing.assert_close(scene_center(ring, seen), center)


def test_cameras_that_look_around_are_centred_where_they_stand():
    # a walk round a room, looking along the way: the axes meet nowhere in particular
    angles = torch.linspace(0, 1.5 * math.pi, 24, dtype=torch.float64)
    middle = torch.tensor([3.0, -1.0, 1.5], dtype=torch.float64)
    eyes = middle + torch.stack([2 * torch.cos(angles), 2 * torch.sin(angles), torch.zeros_like(angles)], -1)
    tangent = torch.stack([-torch.sin(angles), torch.cos(angles), torch.zeros_like(angles)], -1)
    c2w = look_at(eyes, eyes + tangent, Z_UP)
    torch.testing.assert_close(scene_center(c2w), eyes.mean(0))
    # the orbit stays where the walk went (the middle is off centre, so no circle does), not outside the room
    orbit = orbit_poses(c2w, 24)
    eyes_orbit = orbit[:, :3, 3]
    from_middle = (eyes_orbit - middle)[:, :2].norm(dim=-1)
    offset = (eyes_orbit - middle)[:, :2]
    covered = torch.remainder(torch.atan2(offset[:, 1], offset[:, 0]), 2 * math.pi) < 1.4 * math.pi
    torch.testing.assert_close(from_middle[covered], torch.full_like(from_middle[covered], 2.0), atol=0.1, rtol=0)
    assert from_middle.max() <= 2.1 and covered.sum() >= 15  # across the gap: between the walk's ends
    torch.testing.assert_close(eyes_orbit[:, 2], torch.full((24,), 1.5, dtype=torch.float64))  # at eye height
    torch.testing.assert_close(orbit[:, :3, 2], torch.nn.functional.normalize(eyes.mean(0) - eyes_orbit, dim=-1))


def test_point_bounds_ignore_stray_points():
    g = torch.Generator().manual_seed(1)
    points = torch.rand(1000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 4.0, 1.0]) - 1
    points[:10] = torch.tensor([100.0, -100.0, 50.0], dtype=torch.float64)  # 1 % far away
    low, high = point_bounds(points)  # 5 % in from each end of the true box, whatever the strays
    lo, hi = torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64)
    assert (low >= lo).all() and (low <= lo + 0.1 * (hi - lo)).all()
    assert (high <= hi).all() and (high >= hi - 0.1 * (hi - lo)).all()
    torch.testing.assert_close(point_bounds(points, 0.0)[1], points.amax(0))  # quantile 0: the plain box
    with pytest.raises(ManyviewError, match="no points"):
        point_bounds(points[:0])


# --------------------------------------------------------------------------------------------- orbits
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(3, 6), n=st.integers(1, 12))
def test_an_orbit_circles_the_vertical_where_the_cameras_stand_looking_at_the_scene_centre(seed, v, n):
    c2w, center = _ring(seed, v)
    orbit = orbit_poses(c2w, n)
    eyes = orbit[:, :3, 3]
    rel = c2w[:, :3, 3] - center
    radial = (eyes - center)[:, :2]
    # a circle around the vertical through the centre, at the cameras' median distance from it and median height
    torch.testing.assert_close(radial.norm(dim=-1), rel[:, :2].norm(dim=-1).median().expand(n))
    torch.testing.assert_close(eyes[:, 2] - center[2], rel[:, 2].median().expand(n))
    # starting in the direction of the first camera
    torch.testing.assert_close(torch.nn.functional.normalize(radial[0], dim=0),
                               torch.nn.functional.normalize(rel[0, :2], dim=0))
    to_center = torch.nn.functional.normalize(center - eyes, dim=-1)
    torch.testing.assert_close(orbit[:, :3, 2], to_center)  # every camera looks at the centre
    assert orbit[:, 2, 0].abs().max() < 1e-9  # without roll
    angles = torch.atan2(radial[:, 1], radial[:, 0])
    steps = torch.remainder(angles.roll(-1) - angles, 2 * math.pi)
    if n > 1:  # evenly spaced
        torch.testing.assert_close(steps, torch.full((n,), 2 * math.pi / n, dtype=torch.float64))


def test_a_ring_of_photos_gives_an_orbit_through_the_ring_not_its_middle():
    """The family bug: photos taken all round a statue put the cameras' mean centre near the statue, and an orbit
    through the mean centre had radius 0.19 while the cameras stood 1.8-4.9 from the vertical axis."""
    g = torch.Generator().manual_seed(5)
    azimuth = torch.linspace(0, 2 * math.pi, 30, dtype=torch.float64)[:-1]
    distance = 1.8 + 3.1 * torch.rand(29, generator=g, dtype=torch.float64)
    eyes = torch.stack([distance * torch.cos(azimuth), distance * torch.sin(azimuth),
                        0.2 + 0.3 * torch.rand(29, generator=g, dtype=torch.float64)], -1)
    c2w = look_at(eyes, torch.tensor([0.0, 0, 0.6], dtype=torch.float64), Z_UP)
    assert eyes[:, :2].mean(0).norm() < 0.5  # the mean centre is near the statue
    radius = orbit_poses(c2w, 12)[:, :3, 3][:, :2].norm(dim=-1)
    torch.testing.assert_close(radius, distance.median().expand(12), atol=1e-3, rtol=0)
    assert 1.8 <= float(radius[0]) <= 4.9


def test_orbit_overrides_and_elevation_cap():
    c2w, center = _ring(7, 5)
    target = center + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    orbit = orbit_poses(c2w, 6, center=target, radius=1.5, up=torch.tensor([0.0, 0, 2]))
    rel = orbit[:, :3, 3] - target
    torch.testing.assert_close(rel[:, :2].norm(dim=-1), torch.full((6,), 1.5, dtype=torch.float64))
    torch.testing.assert_close(orbit[:, :3, 2], torch.nn.functional.normalize(-rel, dim=-1))
    # the radius override keeps the cameras' elevation
    plain = orbit_poses(c2w, 6, center=target)[0, :3, 3] - target
    torch.testing.assert_close(rel[0, 2] / 1.5, plain[2] / plain[:2].norm())
    with pytest.raises(ManyviewError, match="radius must be positive"):
        orbit_poses(c2w, 3, radius=0.0)


def test_orbit_of_cameras_matches_their_intrinsics():
    c2w, center = _ring(3, 4)
    f = torch.tensor([[30.0, 31, 16, 15], [40, 40, 16, 16], [50, 50, 14, 16], [60, 60, 16, 16]], dtype=torch.float64)
    cams = Cameras(f, c2w, (32, 30))
    orbit = cams.orbit(6)
    assert orbit.shape == (6,) and orbit.dtype == torch.float64
    torch.testing.assert_close(orbit.c2w, orbit_poses(c2w, 6))
    # the median field of view (of two middle values, the lower), the principal point at the image centre
    torch.testing.assert_close(orbit.fxfycxcy, torch.tensor([40.0, 40, 15, 16], dtype=torch.float64).expand(6, 4))
    assert orbit.image_size.tolist() == [[32, 30]] * 6
    # cameras of other image sizes count by their field of view, and the first camera's size is kept
    mixed = Cameras(torch.tensor([[20.0, 20, 8, 8], [80, 80, 32, 32], [80, 80, 32, 32]], dtype=torch.float64),
                    c2w[:3], torch.tensor([[16, 16], [64, 64], [64, 64]]))
    torch.testing.assert_close(mixed.orbit(2).fxfycxcy[0], torch.tensor([20.0, 20, 8, 8], dtype=torch.float64))
    # overrides reach orbit_poses
    torch.testing.assert_close(cams.orbit(3, center=center, radius=2.0).c2w, orbit_poses(c2w, 3, center=center,
                                                                                         radius=2.0))


def test_cameras_looking_straight_down_still_orbit_and_no_orbit_without_cameras():
    # four cameras above the scene looking down at it: their mean centre is on the vertical axis, yet the orbit
    # circles at their distance, 60 degrees above the centre
    above = torch.tensor([[0.5, 0, 3], [-0.5, 0, 3], [0, 0.5, 3], [0, -0.5, 3]], dtype=torch.float64)
    down = look_at(above, torch.zeros(3, dtype=torch.float64), Z_UP)
    torch.testing.assert_close(up_direction(down), Z_UP)
    eyes = orbit_poses(down, 4)[:, :3, 3]
    center = scene_center(down)
    torch.testing.assert_close((eyes - center).norm(dim=-1), (above - center).norm(dim=-1))
    elevation = torch.rad2deg(torch.atan2((eyes - center)[:, 2], (eyes - center)[:, :2].norm(dim=-1)))
    torch.testing.assert_close(elevation, torch.full((4,), 60.0, dtype=torch.float64))
    with pytest.raises(ManyviewError, match="at least one camera"):
        orbit_poses(_ring(0, 3)[0], 0)
    with pytest.raises(ManyviewError, match="stand at the point"):
        orbit_poses(down[:1], 3, center=above[0])


def test_a_box_orbit_keeps_the_whole_box_in_view_and_fills_the_frame():
    low, high = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([3.0, 1.0, 2.5])
    f = torch.tensor([40.0, 40.0, 32.0, 24.0])
    poses = box_orbit_poses(low, high, 16, f, (48, 64), up=torch.tensor([0.0, 1.0, 0.0]), elevation_deg=25.0,
                            fill=0.9)
    cams = Cameras(f.double().expand(16, 4), poses, (48, 64))
    corners = torch.tensor([[x, y, z] for x in (-1.0, 3.0) for y in (0.0, 1.0) for z in (2.0, 2.5)],
                           dtype=torch.float64)
    cam = (corners[None, :, None, :] - poses[:, None, :3, 3][..., None, :]) @ poses[:, None, :3, :3]
    x, y, z = cam[..., 0, 0], cam[..., 0, 1], cam[..., 0, 2]
    assert (z > 0).all()  # every corner in front of every camera: the cameras are outside the box
    u, v = 40 * x / z + 32, 40 * y / z + 24
    margin_u, margin_v = (u - 32).abs() / 32, (v - 24).abs() / 24  # 0 at the centre, 1 at the border
    assert torch.maximum(margin_u, margin_v).max() <= 0.9 + 1e-6  # inside 90 % of the frame ...
    assert torch.maximum(margin_u, margin_v).amax(-1).min() > 0.6  # ... and filling most of it in every view
    centre = torch.tensor([1.0, 0.5, 2.25], dtype=torch.float64)
    torch.testing.assert_close(poses[:, :3, 2], torch.nn.functional.normalize(centre - poses[:, :3, 3], dim=-1))
    height = (poses[:, :3, 3] - centre)[:, 1]
    torch.testing.assert_close(height, height[0].expand(16))  # a circle around the given up direction
    assert poses[:, 1, 0].abs().max() < 1e-9  # without roll about it
    with pytest.raises(ManyviewError, match="fill"):
        box_orbit_poses(low, high, 2, f, (48, 64), fill=0.0)


def test_cameras_orbit_around_a_box_with_a_default_lens():
    cams = Cameras.orbit_around_box(torch.tensor([-1.0, -1, 0]), torch.tensor([1.0, 1, 1]), 5, (40, 60))
    assert cams.shape == (5,) and cams.dtype == torch.float32 and cams.image_size.tolist() == [[40, 60]] * 5
    f = 30 / math.tan(math.radians(25))  # a 50-degree horizontal field of view, square pixels, centred
    torch.testing.assert_close(cams.fxfycxcy, torch.tensor([f, f, 30.0, 20.0]).expand(5, 4))
    poses = box_orbit_poses(torch.tensor([-1.0, -1, 0]), torch.tensor([1.0, 1, 1]), 5, cams.fxfycxcy[0], (40, 60))
    torch.testing.assert_close(cams.c2w, poses.float())
    eyes = poses[:, :3, 3] - torch.tensor([0.0, 0, 0.5], dtype=torch.float64)
    elevation = torch.rad2deg(torch.atan2(eyes[:, 2], eyes[:, :2].norm(dim=-1)))
    torch.testing.assert_close(elevation, torch.full((5,), 20.0, dtype=torch.float64))  # around +z, from above
    with pytest.raises(ManyviewError, match="field of view"):
        Cameras.orbit_around_box(torch.zeros(3), torch.ones(3), 2, fov_x_deg=180.0)
