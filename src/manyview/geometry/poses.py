"""Functions of a set of camera poses: look-at, the normalising similarity, the scene centre, the vertical, orbits.

Every function takes camera-to-world poses ``c2w`` (..., V, 4, 4) (OpenCV axes: x right, y down, z forward), one
set of V cameras per leading index, and returns tensors with the same leading shape.

- :func:`pose_normalization` / :func:`normalize_poses`: the similarity the released LVSM loaders apply to a scene
  (world moved into the frame of the "average camera", then shrunk so the largest camera coordinate is
  ``1 / scale_factor``); :func:`apply_pose_normalization` moves other cameras into that frame and
  :func:`invert_pose_normalization` moves them back.
- :func:`scene_center`: the point the cameras look at; :func:`up_direction`: the world's vertical as they see it;
  :func:`point_bounds`: a robust bounding box of points.
- :func:`orbit_poses`: a circle of cameras around that vertical through that point, where the cameras stand (at
  their typical distance and height), looking at it; :func:`box_orbit_poses`: a circle around a box that keeps
  it all in view (a scene with no cameras).

The scene statistics are computed in float64 (they solve small eigen- and linear systems whose thresholds must not
depend on the caller's precision) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.alignment import quantile_last
from manyview.geometry.transforms import invert_rigid, rigid


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """Poses (..., 4, 4) of cameras at ``eye`` (..., 3) looking at ``target`` (..., 3) without roll; ``up`` (..., 3)
    is the world direction that appears up in the image (broadcast against the others)."""
    eye, target, up = torch.broadcast_tensors(eye, target, up.to(eye))
    z = F.normalize(target - eye, dim=-1)
    x = F.normalize(torch.cross(-up, z, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    return rigid(torch.stack([x, y, z], dim=-1), eye)


# --------------------------------------------------------------------------------------------- normalisation
def pose_normalization(c2w: Tensor, scale_factor: float = 1.35) -> tuple[Tensor, Tensor]:
    """The similarity the released LVSM loaders apply to a scene's cameras.

    c2w (..., V, 4, 4) -> (T (..., 4, 4) rigid, scale (...)) such that the normalised pose is
    ``[R_T R | scale * (R_T t + t_T)]`` (:func:`apply_pose_normalization`): the world is moved into the frame of the
    "average camera" (centre = mean centre, forward = mean z axis, down = mean y axis, orthonormalised), then shrunk
    so that the largest absolute camera coordinate is 1 / scale_factor.
    """
    centers = c2w[..., :3, 3]
    forward = F.normalize(c2w[..., :3, 2].mean(-2), dim=-1)
    down = c2w[..., :3, 1].mean(-2)
    right = F.normalize(torch.cross(down, forward, dim=-1), dim=-1)
    down = F.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    avg_c2w = rigid(torch.stack([right, down, forward], dim=-1), centers.mean(-2))
    T = invert_rigid(avg_c2w)
    aligned = (T[..., None, :3, :3] @ centers[..., None])[..., 0] + T[..., None, :3, 3]
    extent = aligned.abs().flatten(-2).amax(-1)
    # a single camera (or all at one point) has no extent: leave its scale alone instead of dividing by 0. "No
    # extent" is relative to the centres' magnitude: rounding leaves ~1e-16 * |centre| behind, never exactly 0
    rounding = 64 * torch.finfo(extent.dtype).eps * (1 + centers.abs().flatten(-2).amax(-1))
    has_extent = extent > rounding
    scale = torch.where(has_extent, 1.0 / (scale_factor * extent.clamp_min(torch.finfo(extent.dtype).tiny)),
                        torch.ones_like(extent))
    return T, scale


def apply_pose_normalization(c2w: Tensor, T: Tensor, scale: Tensor) -> Tensor:
    """Poses c2w (..., V, 4, 4) in the normalised frame of ``(T, scale)`` from :func:`pose_normalization` (computed
    on these cameras or on others of the same scene, e.g. the inputs when ``c2w`` are render targets)."""
    R_T, t_T = T[..., None, :3, :3], T[..., None, :3, 3]
    scale = torch.as_tensor(scale, dtype=c2w.dtype, device=c2w.device)[..., None, None]
    return rigid(R_T @ c2w[..., :3, :3], ((R_T @ c2w[..., :3, 3:4])[..., 0] + t_T) * scale)


def invert_pose_normalization(c2w: Tensor, T: Tensor, scale: Tensor) -> Tensor:
    """The inverse of :func:`apply_pose_normalization`: normalised poses (..., V, 4, 4) back to world poses."""
    R_inv = T[..., None, :3, :3].transpose(-1, -2)
    scale = torch.as_tensor(scale, dtype=c2w.dtype, device=c2w.device)[..., None, None]
    t = (R_inv @ (c2w[..., :3, 3] / scale - T[..., None, :3, 3])[..., None])[..., 0]
    return rigid(R_inv @ c2w[..., :3, :3], t)


def normalize_poses(c2w: Tensor, scale_factor: float = 1.35) -> Tensor:
    """c2w (..., V, 4, 4) of one scene per leading index -> poses as the released LVSM loaders feed them.

    Apply it to inputs and targets together (the official loader normalises all views of a sample). It is
    idempotent: normalised poses are their own average frame, at scale 1."""
    return apply_pose_normalization(c2w, *pose_normalization(c2w, scale_factor))


# --------------------------------------------------------------------------------------------- scene statistics
def point_bounds(points: Tensor, quantile: float = 0.05) -> tuple[Tensor, Tensor]:
    """A robust bounding box of points (..., P, 3): the per-axis ``quantile`` and ``1 - quantile`` of their
    coordinates, (low (..., 3), high (..., 3)), so that a few stray points do not stretch it."""
    if points.shape[-2] == 0:
        raise ManyviewError("no points to bound")
    if not 0.0 <= quantile < 0.5:
        raise ManyviewError(f"the bounds' quantile must be in [0, 0.5), got {quantile}")
    coords = points.transpose(-1, -2)
    return quantile_last(coords, quantile), quantile_last(coords, 1.0 - quantile)


# The closest point to the optical axes is what the cameras look at only when they do look at it: most of them must
# see it within this angle of their axis.
LOOK_AT_TOLERANCE_DEG = 30.0
# Cameras whose mean viewing direction (of unit vectors) is shorter than this face many ways, as in a walk through a
# room (a half loop gives about 0.6, photos of a facade or a forward-facing capture over 0.9): they look around.
LOOK_AROUND_MEAN_DIRECTION = 0.8


def scene_center(c2w: Tensor, points: Tensor | None = None) -> Tensor:
    """The point the cameras look at (..., 3).

    - Cameras that look at one thing: the least-squares closest point to their optical axes, when it lies in front
      of every camera and the median camera sees it within 30 degrees of its axis.
    - Otherwise, cameras that look around (facing many ways, as in a walk through a room,
      :data:`LOOK_AROUND_MEAN_DIRECTION`): the middle of where they stand (their mean centre), which is free space.
    - Otherwise (axes (nearly) parallel or meeting behind a camera, as in a forward-facing capture): the centre of
      the robust bounding box (:func:`point_bounds`) of the scene's ``points`` (..., P, 3) (SfM points, Gaussians)
      when they are given, else the mean centre moved along the mean viewing direction by twice the cameras'
      spread (1 unit for a single camera or cameras at one point)."""
    return _scene_center(c2w, points)[0].to(c2w.dtype)


def _scene_center(c2w: Tensor, points: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`scene_center` in float64, and whether the cameras look around (..., ) bool (the second case)."""
    c2w64 = c2w.double()
    num = c2w.shape[-3]
    centers, forward = c2w64[..., :3, 3], F.normalize(c2w64[..., :3, 2], dim=-1)
    eye3 = torch.eye(3, dtype=torch.float64, device=c2w.device)
    proj = eye3 - forward[..., :, None] * forward[..., None, :]  # (..., V, 3, 3): projection across each axis
    A, b = proj.sum(-3), (proj @ centers[..., None]).sum(-3)[..., 0]
    solvable = (torch.linalg.eigvalsh(A)[..., 0] > 0.02 * num) & (num > 1)
    point = torch.linalg.solve(torch.where(solvable[..., None, None], A, eye3), b)
    towards = point[..., None, :] - centers
    in_front = ((towards * forward).sum(-1) > 0).all(-1)
    cos_off_axis = (F.normalize(towards, dim=-1) * forward).sum(-1)
    looked_at = solvable & in_front & (cos_off_axis.median(-1).values >= math.cos(math.radians(LOOK_AT_TOLERANCE_DEG)))
    mean, mean_forward = centers.mean(-2), forward.mean(-2)
    if points is not None:
        low, high = point_bounds(torch.as_tensor(points, dtype=torch.float64, device=c2w.device))
        ahead = ((low + high) / 2).expand_as(point)
    else:
        spread = (centers - mean[..., None, :]).norm(dim=-1).amax(-1)
        reach = torch.where(spread > 0, 2 * spread, torch.ones_like(spread))
        ahead = mean + F.normalize(mean_forward, dim=-1) * reach[..., None]
    looks_around = ~looked_at & (mean_forward.norm(dim=-1) < LOOK_AROUND_MEAN_DIRECTION)
    center = torch.where(looked_at[..., None], point, torch.where(looks_around[..., None], mean, ahead))
    return center, looks_around


def up_direction(c2w: Tensor) -> Tensor:
    """The world's vertical (..., 3) as the cameras see it (a unit vector).

    Photos are taken without roll, so every camera's x axis is horizontal: the vertical is the direction most
    orthogonal to all x axes (exact for roll-free cameras whose x axes span the horizontal plane), signed like the
    cameras' mean up (-y) axis. When the x axes are (nearly) parallel that direction is ambiguous, and the mean up
    axis itself is used."""
    c2w64 = c2w.double()
    mean_up = F.normalize(-c2w64[..., :3, 1].mean(-2), dim=-1)
    right = c2w64[..., :3, 0]
    evals, evecs = torch.linalg.eigh(right.transpose(-1, -2) @ right)
    up = evecs[..., :, 0]
    up = torch.where(((up * mean_up).sum(-1) >= 0)[..., None], up, -up)
    return torch.where((evals[..., 1] < 0.05 * evals[..., 2])[..., None], mean_up, up).to(c2w.dtype)


def _perpendicular(up: Tensor) -> Tensor:
    """A unit vector (..., 3) orthogonal to the unit vector ``up`` (..., 3)."""
    axis = F.one_hot(up.abs().argmin(-1), 3).to(up)
    return F.normalize(torch.linalg.cross(up, axis), dim=-1)


def _ring(center: Tensor, up: Tensor, start: Tensor, radius: Tensor, height: Tensor, n: int) -> Tensor:
    """``n`` poses (..., n, 4, 4) evenly spaced in angle around the axis through ``center`` along ``up``, at
    ``radius`` (..., 1) from it (or (..., n): one per pose) and ``height`` (...) above the centre, the first towards
    ``start`` (a unit vector orthogonal to ``up``), turning counter-clockwise seen from above, each looking at
    ``center`` without roll."""
    e2 = torch.linalg.cross(up, start)
    theta = torch.arange(n, dtype=center.dtype, device=center.device) * (2 * math.pi / n)
    ring = torch.cos(theta)[:, None] * start[..., None, :] + torch.sin(theta)[:, None] * e2[..., None, :]
    eye = (center + height[..., None] * up)[..., None, :] + radius[..., None] * ring  # (..., n, 3)
    return look_at(eye, center[..., None, :], up[..., None, :])


# A walk through a room is no circle: the loop of its orbit follows the cameras' distance from the middle, per
# direction, as the median over the cameras within this angle of it (interpolated across directions none faces).
PATH_WINDOW_DEG = 20.0


def _path_radius(across: Tensor, start: Tensor, up: Tensor, n: int) -> Tensor:
    """(..., n) distance from the axis of the cameras (horizontal offsets ``across`` (..., V, 3)) in each of the
    ``n`` directions of :func:`_ring`."""
    e2 = torch.linalg.cross(up, start)
    phi = torch.atan2((across * e2[..., None, :]).sum(-1), (across * start[..., None, :]).sum(-1))  # (..., V)
    rho = across.norm(dim=-1)
    theta = torch.arange(n, dtype=phi.dtype, device=phi.device) * (2 * math.pi / n)
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi  # the range of atan2
    apart = torch.remainder(theta[:, None] - phi[..., None, :] + math.pi, 2 * math.pi) - math.pi  # (..., n, V)
    near = apart.abs() <= math.radians(PATH_WINDOW_DEG)
    windowed = torch.where(near, rho[..., None, :], torch.full_like(apart, math.nan)).nanmedian(-1).values
    # directions no camera faces: linear in angle between the nearest cameras on either side (periodic)
    phi_sorted, order = phi.sort(-1)
    rho_sorted = rho.gather(-1, order)
    phi_ext = torch.cat([phi_sorted[..., -1:] - 2 * math.pi, phi_sorted, phi_sorted[..., :1] + 2 * math.pi], -1)
    rho_ext = torch.cat([rho_sorted[..., -1:], rho_sorted, rho_sorted[..., :1]], -1)
    query = theta.expand(phi.shape[:-1] + (n,)).contiguous()
    right = torch.searchsorted(phi_ext.contiguous(), query, right=True).clamp(1, phi_ext.shape[-1] - 1)
    phi0, phi1 = phi_ext.gather(-1, right - 1), phi_ext.gather(-1, right)
    weight = ((query - phi0) / (phi1 - phi0).clamp_min(1e-12)).clamp(0, 1)
    between = torch.lerp(rho_ext.gather(-1, right - 1), rho_ext.gather(-1, right), weight)
    return torch.where(near.any(-1), windowed, between)


# Orbits never look down (or up) more steeply than this: a capture taken from straight above the scene centre
# still gets a circle to orbit on, at the cameras' distance.
MAX_ORBIT_ELEVATION_DEG = 60.0


def orbit_poses(c2w: Tensor, n: int, *, center: Tensor | None = None, up: Tensor | None = None,
                radius: float | Tensor | None = None, points: Tensor | None = None) -> Tensor:
    """``n`` poses (..., n, 4, 4) of an orbit that frames what the cameras c2w (..., V, 4, 4) look at.

    The orbit circles the vertical axis (``up``, default :func:`up_direction`) through the scene centre (``center``;
    default :func:`scene_center`: the point closest to the cameras' optical axes when they look at it, the middle
    of where they stand when they look around, as in a room, else the centre of ``points`` (..., P, 3) when given,
    such as the scene's SfM points or Gaussians). It stands where the cameras stand: its radius and height above
    the centre are the cameras' median distance from that axis and median height above the centre (a ring of
    photos around an object gives an orbit through the ring, not through its middle); its elevation is capped at
    60 degrees, so cameras looking straight down still get a circle. For cameras that look around, the loop
    follows their distance from the middle direction by direction (a walk round an oblong room stays in the room).
    ``radius`` overrides the radius (a circle), keeping the elevation. The first pose faces the first camera's
    direction from the axis; the poses are evenly spaced in angle, counter-clockwise seen from above, each looking
    at the centre without roll.
    """
    if n < 1:
        raise ManyviewError(f"an orbit needs at least one camera, got {n}")
    c2w64 = c2w.double()
    up = up_direction(c2w64) if up is None else F.normalize(torch.as_tensor(up, dtype=torch.float64,
                                                                            device=c2w.device), dim=-1)
    center_given = center is not None
    if center_given:
        center = torch.as_tensor(center, dtype=torch.float64, device=c2w.device)
        looks_around = torch.zeros(c2w.shape[:-3], dtype=torch.bool, device=c2w.device)
    else:
        center, looks_around = _scene_center(c2w64, points)
    up, center = torch.broadcast_tensors(up, center.expand_as(c2w64[..., 0, :3, 3]))
    rel = c2w64[..., :3, 3] - center[..., None, :]  # (..., V, 3)
    heights = (rel * up[..., None, :]).sum(-1)
    across = rel - heights[..., None] * up[..., None, :]
    dist, height = across.norm(dim=-1).median(-1).values, heights.median(-1).values
    reach = torch.hypot(dist, height)
    if bool((reach <= 1e-9 * rel.norm(dim=-1).amax(-1).clamp_min(1.0)).any()):
        raise ManyviewError("the cameras stand at the point they look at: there is no distance to orbit at")
    # start where the first camera stands; a camera on the axis gives no direction, so take any horizontal one
    first = across[..., 0, :]
    start = torch.where((first.norm(dim=-1) > 1e-9 * reach)[..., None], F.normalize(first, dim=-1),
                        _perpendicular(up))
    cap = math.radians(MAX_ORBIT_ELEVATION_DEG)
    elevation = torch.atan2(height, dist).clamp(-cap, cap)
    if radius is None:
        circle = (reach * torch.cos(elevation))[..., None]
        radii = torch.where(looks_around[..., None], _path_radius(across, start, up, n), circle)
        radius = circle[..., 0]
    else:
        radius = torch.as_tensor(radius, dtype=torch.float64, device=c2w.device).expand_as(reach)
        if bool((radius <= 0).any()):
            raise ManyviewError(f"an orbit's radius must be positive, got {radius.min().item()}")
        radii = radius[..., None]
    return _ring(center, up, start, radii, radius * torch.tan(elevation), n).to(c2w.dtype)


def box_orbit_poses(low: Tensor, high: Tensor, n: int, fxfycxcy: Tensor, image_size, *,
                    up: Tensor | None = None, elevation_deg: float = 20.0, fill: float = 0.9) -> Tensor:
    """``n`` poses (n, 4, 4) of an orbit around the box [low, high] (3,) that keeps the whole box in view.

    The orbit circles the vertical axis (``up``, default +z) through the box centre at ``elevation_deg`` above
    it, looking at the centre, at the smallest distance at which every corner of the box projects within
    ``fill`` of the image's half-width and half-height for the intrinsics ``fxfycxcy`` (4,) and ``image_size``
    (height, width), from every direction of the circle: the box fills most of the frame, and the cameras stay
    outside it (every corner lies in front of each camera)."""
    if n < 1:
        raise ManyviewError(f"an orbit needs at least one camera, got {n}")
    if not 0.0 < fill <= 1.0:
        raise ManyviewError(f"the orbit's fill must be in (0, 1], got {fill}")
    if not -90.0 < elevation_deg < 90.0:
        raise ManyviewError(f"the orbit's elevation must be strictly between -90 and 90 degrees, got {elevation_deg}")
    low, high = (torch.as_tensor(v, dtype=torch.float64) for v in (low, high))
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if up is None else F.normalize(
        torch.as_tensor(up, dtype=torch.float64), dim=-1)
    f = torch.as_tensor(fxfycxcy, dtype=torch.float64)
    height_px, width_px = (float(v) for v in image_size)
    center = (low + high) / 2
    signs = torch.tensor([[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0) for sz in (-1.0, 1.0)],
                         dtype=torch.float64)
    corners = signs * (high - low) / 2  # (8, 3) relative to the centre
    # the distance only depends on the direction, so find it on a dense circle (and the orbit's own angles)
    elevation = math.radians(elevation_deg)
    unit = torch.tensor(1.0, dtype=torch.float64)
    start = _perpendicular(up)
    radius, height = (unit * math.cos(elevation))[None], unit * math.sin(elevation)
    dense = torch.cat([_ring(center, up, start, radius, height, 360), _ring(center, up, start, radius, height, n)])
    R = dense[:, :3, :3]  # columns: camera x (right), y (down), z (forward) in the world
    local = corners @ R  # (D, 8, 3): corner offsets along each camera's axes
    # corner at distance d along the view: depth d + z; it stays within the fill when
    # |x| <= fill * (cx / fx) * depth (left/right, per side of the principal point) and likewise for y
    half_x = torch.where(local[..., 0] >= 0, width_px - f[2], f[2]) / f[0]
    half_y = torch.where(local[..., 1] >= 0, height_px - f[3], f[3]) / f[1]
    need = torch.maximum(local[..., 0].abs() / (fill * half_x), local[..., 1].abs() / (fill * half_y)) - local[..., 2]
    diagonal = (high - low).norm()
    clearance = (-local[..., 2]).amax() + 1e-3 * diagonal  # every corner strictly in front of the camera
    distance = torch.maximum(need.amax(), clearance)
    if not bool(distance > 0):
        raise ManyviewError("the box to orbit has no extent")
    return _ring(center, up, start, (distance * math.cos(elevation))[None], distance * math.sin(elevation), n)


__all__ = ["LOOK_AROUND_MEAN_DIRECTION", "LOOK_AT_TOLERANCE_DEG", "MAX_ORBIT_ELEVATION_DEG", "PATH_WINDOW_DEG",
           "apply_pose_normalization", "box_orbit_poses", "invert_pose_normalization", "look_at", "normalize_poses",
           "orbit_poses", "point_bounds", "pose_normalization", "scene_center", "up_direction"]
