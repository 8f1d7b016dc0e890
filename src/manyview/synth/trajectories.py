"""Camera paths through synthetic scenes: orbits around objects and walkthroughs of rooms.

Intrinsics are drawn per trajectory: square pixels, a field of view in ``fov_deg`` across the longer image side,
the principal point at the centre unless ``principal_jitter`` (a fraction of the image size) moves it.
Cameras are float32, OpenCV axes, world z up, with no roll unless ``roll_deg`` asks for some.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from manyview.scene import Cameras
from manyview.synth.scene import Scene


def _rng(scene: Scene, seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([scene.seed, int(seed), stream])


def sample_intrinsics(
    rng: np.random.Generator, num_views: int, height: int, width: int, fov_deg: tuple[float, float] = (45.0, 70.0),
    principal_jitter: float = 0.0, per_view: bool = False,
) -> torch.Tensor:
    """(N, 4) fx, fy, cx, cy in pixels."""
    count = num_views if per_view else 1
    fov = np.radians(rng.uniform(*fov_deg, size=count))
    f = 0.5 * max(height, width) / np.tan(fov / 2)
    cx = width / 2 + principal_jitter * width * rng.uniform(-1, 1, size=count)
    cy = height / 2 + principal_jitter * height * rng.uniform(-1, 1, size=count)
    out = np.stack([f, f, cx, cy], -1)
    return torch.from_numpy(np.broadcast_to(out, (num_views, 4)).copy()).float()


def _look_at(eye: np.ndarray, target: np.ndarray, fxfycxcy: torch.Tensor, height: int, width: int,
             roll: np.ndarray) -> Cameras:
    cams = Cameras.look_at(torch.from_numpy(eye), torch.from_numpy(target), torch.tensor([0.0, 0.0, 1.0]).double(),
                           fxfycxcy.double(), (height, width))
    c, s = np.cos(roll), np.sin(roll)
    rz = np.zeros((len(roll), 4, 4))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = c, -s, s, c
    rz[:, 2, 2] = rz[:, 3, 3] = 1.0
    return cams.with_poses(cams.c2w @ torch.from_numpy(rz)).to(torch.float32)


def orbit_cameras(
    scene: Scene, num_views: int, height: int, width: int, seed: int = 0, *,
    fov_deg: tuple[float, float] = (45.0, 70.0), elevation_deg: tuple[float, float] = (20.0, 50.0),
    distance_scale: tuple[float, float] = (0.75, 1.0), arc_deg: float = 360.0, roll_deg: float = 0.0,
    principal_jitter: float = 0.0, per_view_intrinsics: bool = False,
) -> Cameras:
    """Cameras on a jittered orbit around ``scene.center``, looking at (a jittered) centre.

    Azimuths are spread evenly over ``arc_deg`` with +-25 % jitter of the spacing; the distance makes the
    objects' bounding sphere just fit the shorter image side, times ``distance_scale`` (< 1: closer).
    """
    rng = _rng(scene, seed, 10)
    K = sample_intrinsics(rng, num_views, height, width, fov_deg, principal_jitter, per_view_intrinsics)
    half_fov = np.arctan(0.5 * min(height, width) / K[:, 0].double().numpy())
    radius = float(np.linalg.norm(scene.extent))
    distance = radius / np.sin(half_fov) * rng.uniform(*distance_scale)
    spacing = math.radians(arc_deg) / num_views
    azimuth = rng.uniform(0, 2 * math.pi) + spacing * (np.arange(num_views) + rng.uniform(-0.25, 0.25, num_views))
    lo, hi = np.radians(elevation_deg)
    elevation = np.clip(rng.uniform(lo, hi) + rng.uniform(-1, 1, num_views) * math.radians(5), lo, hi)
    target = scene.center + rng.uniform(-0.1, 0.1, size=(num_views, 3)) * scene.extent
    offset = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1)
    eye = target + distance[:, None] * offset
    roll = np.radians(roll_deg) * rng.uniform(-1, 1, num_views)
    return _look_at(eye, target, K, height, width, roll)


def walkthrough_cameras(
    scene: Scene, num_views: int, height: int, width: int, seed: int = 0, *,
    fov_deg: tuple[float, float] = (50.0, 70.0), step: tuple[float, float] = (0.12, 0.25),
    eye_height: tuple[float, float] = (1.3, 1.7), yaw_deg: float = 30.0, inward_deg: tuple[float, float] = (0.0, 35.0),
    pitch_deg: tuple[float, float] = (-15.0, 5.0),
    roll_deg: float = 0.0, principal_jitter: float = 0.0, per_view_intrinsics: bool = False,
) -> Cameras:
    """Forward motion along the furniture-free ellipse of a room, turning with it and glancing around.

    Consecutive cameras are ``step`` metres apart; the heading follows the path's tangent, turned towards the
    middle by a constant ``inward_deg`` and by a slowly varying yaw of up to ``yaw_deg``, so views see walls,
    furniture and the middle of the room.
    """
    if scene.walk_axes is None:
        raise ValueError("walkthrough_cameras needs a room scene (make_scene(seed, kind='room'))")
    rng = _rng(scene, seed, 20)
    K = sample_intrinsics(rng, num_views, height, width, fov_deg, principal_jitter, per_view_intrinsics)
    ax, ay = scene.walk_axes
    k = np.arange(num_views)
    direction = rng.choice([-1.0, 1.0])
    phi = rng.uniform(0, 2 * math.pi) + direction * k * rng.uniform(*step) / (0.5 * (ax + ay))
    x, y = scene.center[0] + ax * np.cos(phi), scene.center[1] + ay * np.sin(phi)
    tangent = direction * np.stack([-ax * np.sin(phi), ay * np.cos(phi)], -1)

    def wave(amplitude: float) -> np.ndarray:  # slow, smooth, random oscillation over the frames
        return amplitude * np.sin(rng.uniform(0.1, 0.35) * k + rng.uniform(0, 2 * math.pi))

    inward = direction * math.radians(rng.uniform(*inward_deg))  # the centre is on the walker's left when direction > 0
    heading = np.arctan2(tangent[:, 1], tangent[:, 0]) + inward + wave(math.radians(yaw_deg) * rng.uniform(0.3, 1.0))
    lo, hi = np.radians(pitch_deg)
    pitch = np.clip(rng.uniform(lo, hi) + wave(math.radians(4.0)), lo, hi)
    z = rng.uniform(*eye_height) + wave(0.03)
    eye = np.stack([x, y, z], -1)
    forward = np.stack([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), np.sin(pitch)], -1)
    roll = np.radians(roll_deg) * rng.uniform(-1, 1, num_views)
    return _look_at(eye, eye + forward, K, height, width, roll)


def sample_cameras(scene: Scene, num_views: int, height: int, width: int, seed: int = 0, **kwargs) -> Cameras:
    """The scene kind's own trajectory: an orbit for object scenes, a walkthrough for rooms."""
    if scene.kind == "room":
        return walkthrough_cameras(scene, num_views, height, width, seed, **kwargs)
    return orbit_cameras(scene, num_views, height, width, seed, **kwargs)
