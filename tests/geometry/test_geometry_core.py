"""The lead's core geometry and Cameras conventions, checked against mathematics and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.geometry.projection import depth_to_pointmap, pointmap_to_depth, project, unproject
from manyview.geometry.rays import camera_directions, pixel_grid, pixel_rays, plucker_embedding
from manyview.geometry.rotation import (
    axis_angle_to_matrix,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotation,
    rotation_angle,
)
from manyview.geometry.transforms import invert_rigid, rigid, transform_points
from manyview.scene import Cameras

finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
quats = st.tuples(finite, finite, finite, finite).filter(lambda q: sum(x * x for x in q) > 1e-3)
axis_angles = st.tuples(finite, finite, finite).map(lambda v: tuple(3.0 * x for x in v)).filter(
    lambda v: sum(x * x for x in v) < (math.pi - 1e-3) ** 2)


def _random_cameras(seed: int, n: int = 4, dtype=torch.float64) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    R = random_rotation(n, g, dtype)
    t = torch.randn(n, 3, generator=g, dtype=dtype)
    f = 50 + 100 * torch.rand(n, 2, generator=g, dtype=dtype)
    c = torch.tensor([32.0, 24.0], dtype=dtype) + torch.randn(n, 2, generator=g, dtype=dtype)
    return Cameras(torch.cat([f, c], -1), rigid(R, t), torch.tensor([48, 64]))


# ---------------------------------------------------------------------------------------------- rotations
@settings(max_examples=60, deadline=None)
@given(quats)
def test_quaternion_matrix_round_trip(q):
    q = torch.tensor(q, dtype=torch.float64)
    R = quaternion_to_matrix(q)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    q_back = matrix_to_quaternion(R)
    q_unit = q / q.norm()
    # q and -q are the same rotation; matrix_to_quaternion returns the one with w >= 0.
    assert torch.allclose(q_back, q_unit, atol=1e-9) or torch.allclose(q_back, -q_unit, atol=1e-9)
    assert q_back[0] >= 0
    assert torch.allclose(quaternion_to_matrix(q_back), R, atol=1e-12)


def test_quaternion_hand_values():
    s = math.sqrt(0.5)
    # 90 degrees about z maps x to y.
    R = quaternion_to_matrix(torch.tensor([s, 0.0, 0.0, s], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(R, expected, atol=1e-15)
    # 180 degrees about x: the w = 0 branch of matrix_to_quaternion.
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    q = matrix_to_quaternion(R)
    assert torch.allclose(q.abs(), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(axis_angles)
def test_axis_angle_angle_and_axis(v):
    v = torch.tensor(v, dtype=torch.float64)
    R = axis_angle_to_matrix(v)
    assert rotation_angle(R) == pytest.approx(float(v.norm()), abs=1e-9)
    assert torch.allclose(R @ v, v, atol=1e-9)  # the axis is fixed


def test_rotation_angle_is_exact_near_zero_and_pi():
    tiny = axis_angle_to_matrix(torch.tensor([1e-7, 0.0, 0.0], dtype=torch.float64))
    assert rotation_angle(tiny) == pytest.approx(1e-7, rel=1e-6)
    near_pi = axis_angle_to_matrix(torch.tensor([0.0, math.pi - 1e-6, 0.0], dtype=torch.float64))
    assert rotation_angle(near_pi) == pytest.approx(math.pi - 1e-6, abs=1e-9)


def test_rotation_gradients():
    q = torch.tensor([0.9, 0.2, -0.3, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))
    for v in ([0.3, -0.2, 0.5], [0.0, 0.0, 0.0]):  # the small-angle series branch too
        v = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))


def test_random_rotation_is_proper_and_seeded():
    a = random_rotation(16, torch.Generator().manual_seed(3))
    b = random_rotation(16, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.allclose(a @ a.transpose(-1, -2), torch.eye(3, dtype=a.dtype).expand(16, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(a), torch.ones(16, dtype=a.dtype), atol=1e-12)


# --------------------------------------------------------------------------------------------- transforms
def test_invert_rigid_and_transform_points():
    g = torch.Generator().manual_seed(0)
    T = rigid(random_rotation(5, g), torch.randn(5, 3, generator=g, dtype=torch.float64))
    assert torch.allclose(invert_rigid(T) @ T, torch.eye(4, dtype=T.dtype).expand(5, 4, 4), atol=1e-12)
    pts = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    moved = transform_points(T, pts)
    assert torch.allclose(transform_points(invert_rigid(T), moved), pts, atol=1e-12)
    homog = torch.cat([pts, torch.ones(5, 7, 1, dtype=pts.dtype)], -1)
    assert torch.allclose(moved, (homog @ T.transpose(-1, -2))[..., :3], atol=1e-12)
    assert torch.allclose(transform_points(T[0], pts[0]), moved[0], atol=1e-12)


# ------------------------------------------------------------------------------------------------- rays
def test_pixel_grid_conventions():
    g = pixel_grid(2, 3)
    assert g.shape == (2, 3, 2)
    assert g[0, 0].tolist() == [0.5, 0.5] and g[1, 2].tolist() == [2.5, 1.5]
    assert pixel_grid(2, 3, offset=0.0)[1, 2].tolist() == [2.0, 1.0]


def test_camera_directions_and_rays_hit_their_pixels():
    cams = _random_cameras(1)
    h, w = 6, 8
    d_cam = camera_directions(cams.fxfycxcy, h, w)
    assert torch.allclose(d_cam[..., 2], torch.ones_like(d_cam[..., 2]))
    o, d = pixel_rays(cams.fxfycxcy, cams.c2w, h, w)
    assert torch.allclose(d.norm(dim=-1), torch.ones(4, h, w, dtype=d.dtype), atol=1e-12)
    assert torch.allclose(o, cams.centers[:, None, None].expand_as(o))
    # A point anywhere along a ray projects back onto that ray's pixel centre.
    pts = (o + 3.7 * d).reshape(4, -1, 3)
    uv, z = project(pts, cams.fxfycxcy, cams.w2c)
    assert (z > 0).all()
    assert torch.allclose(uv, pixel_grid(h, w, dtype=uv.dtype).reshape(1, -1, 2).expand_as(uv), atol=1e-9)


def test_plucker_hand_values():
    o = torch.tensor([[1.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 1.0, 0.0]])
    # o x d = (0, 0, 1).
    assert plucker_embedding(o, d).tolist() == [[0.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert plucker_embedding(o, d, order="direction_moment").tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]]
    o2 = torch.tensor([[0.0, 2.0, 3.0]])
    d2 = torch.tensor([[1.0, 0.0, 0.0]])
    # (0,2,3) x (1,0,0) = (2*0 - 3*0, 3*1 - 0*0, 0*0 - 2*1) = (0, 3, -2).
    assert plucker_embedding(o2, d2)[0, :3].tolist() == [0.0, 3.0, -2.0]
    with pytest.raises(ValueError):
        plucker_embedding(o, d, order="moment_first")


def test_plucker_moment_is_origin_invariant_along_ray():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(10, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(10, 3, generator=g, dtype=torch.float64), dim=-1)
    assert torch.allclose(plucker_embedding(o, d), plucker_embedding(o + 2.5 * d, d), atol=1e-12)


# ------------------------------------------------------------------------------------------- projection
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_project_unproject_inverse(seed):
    cams = _random_cameras(seed)
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(4, 9, 2, generator=g, dtype=torch.float64) * torch.tensor([64.0, 48.0], dtype=torch.float64)
    depth = 0.5 + 5 * torch.rand(4, 9, generator=g, dtype=torch.float64)
    pts = unproject(uv, depth, cams.fxfycxcy, cams.c2w)
    uv2, z = project(pts, cams.fxfycxcy, cams.w2c)
    assert torch.allclose(uv2, uv, atol=1e-8)
    assert torch.allclose(z, depth, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.5]))
def test_depth_pointmap_inverse(seed, offset):
    cams = _random_cameras(seed, n=2)
    g = torch.Generator().manual_seed(seed)
    depth = 1 + torch.rand(2, 5, 7, generator=g, dtype=torch.float64)
    world = depth_to_pointmap(depth, cams.fxfycxcy, cams.c2w, offset)
    assert torch.allclose(pointmap_to_depth(world, cams.c2w), depth, atol=1e-10)
    cam = depth_to_pointmap(depth, cams.fxfycxcy, offset=offset)
    assert torch.equal(pointmap_to_depth(cam), depth)
    uv, _ = project(world.reshape(2, -1, 3), cams.fxfycxcy, cams.w2c)
    assert torch.allclose(uv, pixel_grid(5, 7, offset, torch.float64).reshape(1, -1, 2).expand_as(uv), atol=1e-9)


def test_project_gradcheck():
    cams = _random_cameras(5, n=1)
    pts = torch.tensor([[[0.1, -0.2, 0.0]]], dtype=torch.float64) + cams.centers[:, None] + 2 * cams.R[:, None, :, 2]
    pts.requires_grad_(True)
    f = cams.fxfycxcy.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, k: project(p, k, cams.w2c), (pts, f))


# ---------------------------------------------------------------------------------------------- Cameras
def test_cameras_opengl_round_trip_and_axes():
    cams = _random_cameras(2)
    gl = cams.to_opengl()
    back = Cameras.from_opengl(cams.fxfycxcy, gl, cams.image_size)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-12)
    # An OpenGL camera looks down its -z and has +y up: the OpenCV forward axis is the negated GL z axis.
    assert torch.allclose(gl[..., :3, 2], -cams.c2w[..., :3, 2])
    assert torch.allclose(gl[..., :3, 1], -cams.c2w[..., :3, 1])
    assert torch.allclose(gl[..., :3, 3], cams.centers)


def test_cameras_colmap_round_trip_and_hand_case():
    cams = _random_cameras(3)
    q, t = cams.to_colmap()
    assert (q[:, 0] >= 0).all()
    back = Cameras.from_colmap(cams.fxfycxcy, q, t, cams.image_size)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-10)
    # Identity rotation, tvec (1, 2, 3): world-to-camera x -> x + t, so the centre is at -t.
    one = Cameras.from_colmap(torch.tensor([10.0, 10.0, 5.0, 5.0]), torch.tensor([1.0, 0.0, 0.0, 0.0]),
                              torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10, 10]))
    assert one.centers.tolist() == [-1.0, -2.0, -3.0]


def test_cameras_normalized_intrinsics_round_trip():
    cams = _random_cameras(4)
    norm = cams.normalized_intrinsics()
    assert torch.allclose(norm[:, 0], cams.fx / 64) and torch.allclose(norm[:, 3], cams.cy / 48)
    back = Cameras.from_normalized(norm, cams.c2w, cams.image_size)
    assert torch.allclose(back.fxfycxcy, cams.fxfycxcy, atol=1e-12)


def test_cameras_resized_scales_pixel_coordinates():
    cams = _random_cameras(6)
    pts = cams.centers[:, None] + 3 * cams.R[:, None, :, 2] + 0.1  # in front of every camera
    uv, _ = project(pts, cams.fxfycxcy, cams.w2c)
    small = cams.resized(24, 16)  # half height, quarter width
    uv_small, _ = project(pts, small.fxfycxcy, small.w2c)
    assert small.image_size[0].tolist() == [24, 16]
    # COLMAP convention: image corners [0, W] x [0, H] scale, so every pixel coordinate scales.
    assert torch.allclose(uv_small, uv * torch.tensor([16 / 64, 24 / 48], dtype=uv.dtype), atol=1e-9)
    # Pixel centres stay pixel centres: the centre of pixel (0, 0) of the small image covers the same rays
    # as the point (2, 1) (= (0.5 * 4, 0.5 * 2)) of the large one.
    d_big = camera_directions(cams.fxfycxcy, 48, 64, offset=0.0)[:, 1, 2]
    d_small = camera_directions(small.fxfycxcy, 24, 16)[:, 0, 0]
    assert torch.allclose(d_big, d_small, atol=1e-12)


def test_cameras_cropped_shifts_pixel_coordinates():
    cams = _random_cameras(7)
    pts = cams.centers[:, None] + 3 * cams.R[:, None, :, 2]
    uv, _ = project(pts, cams.fxfycxcy, cams.w2c)
    crop = cams.cropped(top=5, left=9, height=20, width=30)
    uv_c, _ = project(pts, crop.fxfycxcy, crop.w2c)
    assert torch.allclose(uv_c, uv - torch.tensor([9.0, 5.0], dtype=uv.dtype), atol=1e-9)
    assert crop.image_size[0].tolist() == [20, 30]


def test_cameras_look_at():
    eye = torch.tensor([[0.0, 0.0, -5.0], [3.0, 1.0, 2.0]], dtype=torch.float64)
    target = torch.zeros(2, 3, dtype=torch.float64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    f = torch.tensor([100.0, 100.0, 32.0, 24.0], dtype=torch.float64)
    cams = Cameras.look_at(eye, target, up, f, torch.tensor([48, 64]))
    assert torch.allclose(cams.R @ cams.R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    assert torch.allclose(torch.linalg.det(cams.R), torch.ones(2, dtype=torch.float64))
    uv, z = project(torch.stack([target, target + up], 1), cams.fxfycxcy, cams.w2c)
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0], dtype=torch.float64).expand(2, 2), atol=1e-9)
    assert (uv[:, 1, 1] < uv[:, 0, 1]).all()  # world up appears up in the image (smaller v)
    assert torch.allclose(z[:, 0], (eye - target).norm(dim=-1))


def test_cameras_transform_preserves_projections():
    cams = _random_cameras(8)
    g = torch.Generator().manual_seed(8)
    noise = 0.2 * torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    pts = cams.centers[:, None] + 2 * cams.R[:, None, :, 2] + noise
    T = rigid(random_rotation(1, g)[0], torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    s = 2.5
    moved = cams.transform(T, s)
    pts_moved = s * pts @ T[:3, :3].T + T[:3, 3]
    uv, z = project(pts, cams.fxfycxcy, cams.w2c)
    uv2, z2 = project(pts_moved, moved.fxfycxcy, moved.w2c)
    assert torch.allclose(uv, uv2, atol=1e-8)
    assert torch.allclose(z2, s * z, atol=1e-10)


def test_cameras_K_and_indexing():
    cams = _random_cameras(9)
    K = cams.K
    assert K.shape == (4, 3, 3)
    assert torch.equal(K[:, 0, 2], cams.cx) and torch.equal(K[:, 1, 1], cams.fy) and (K[:, 2, 2] == 1).all()
    back = Cameras.from_K(K, cams.c2w, cams.image_size)
    assert torch.equal(back.fxfycxcy, cams.fxfycxcy)
    sub = cams[1:3]
    assert len(sub) == 2 and torch.equal(sub.c2w, cams.c2w[1:3])
    joined = Cameras.cat([cams[:1], cams[1:]])
    assert torch.equal(joined.c2w, cams.c2w)
    assert np.allclose(Cameras.from_w2c(cams.fxfycxcy, cams.w2c, cams.image_size).c2w.numpy(), cams.c2w.numpy())
