"""Functions of a set of camera poses: look-at, the normalising similarity, the scene centre, the vertical, orbits.

Every function takes camera-to-world poses ``c2w`` (..., V, 4, 4) (OpenCV axes: x right, y down, z forward), one
set of V cameras per leading index, and returns tensors with the same leading shape.

- :func:`pose_normalization` / :func:`normalize_poses`: the similarity the released LVSM loaders apply to a scene
  (world moved into the frame of the "average camera", then shrunk so the largest camera coordinate is
  ``1 / scale_factor``); :func:`apply_pose_normalization` moves other cameras into that frame and
  :func:`invert_pose_normalization` moves them back.
- :func:`scene_center`: the point the cameras look at; :func:`up_direction`: the world's vertical as they see it;
  :func:`orbit_poses`: a circle of cameras through their mean centre, around that vertical, looking at that point.

The scene statistics are computed in float64 (they solve small eigen- and linear systems whose thresholds must not
depend on the caller's precision) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError
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
    # a single camera (or all at one point) has no extent: leave its scale alone instead of dividing by 0
    scale = torch.where(extent > 0, 1.0 / (scale_factor * extent.clamp_min(torch.finfo(extent.dtype).tiny)),
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
def scene_center(c2w: Tensor) -> Tensor:
    """The point the cameras look at (..., 3): the least-squares closest point to their optical axes.

    When the axes are (nearly) parallel, or the point would lie behind a camera, it is the mean centre moved along
    the mean viewing direction by twice the cameras' spread (1 unit for a single camera or cameras at one point)."""
    c2w64 = c2w.double()
    num = c2w.shape[-3]
    centers, forward = c2w64[..., :3, 3], F.normalize(c2w64[..., :3, 2], dim=-1)
    eye3 = torch.eye(3, dtype=torch.float64, device=c2w.device)
    proj = eye3 - forward[..., :, None] * forward[..., None, :]  # (..., V, 3, 3): projection across each axis
    A, b = proj.sum(-3), (proj @ centers[..., None]).sum(-3)[..., 0]
    solvable = (torch.linalg.eigvalsh(A)[..., 0] > 0.02 * num) & (num > 1)
    point = torch.linalg.solve(torch.where(solvable[..., None, None], A, eye3), b)
    in_front = (((point[..., None, :] - centers) * forward).sum(-1) > 0).all(-1)
    mean = centers.mean(-2)
    spread = (centers - mean[..., None, :]).norm(dim=-1).amax(-1)
    reach = torch.where(spread > 0, 2 * spread, torch.ones_like(spread))
    fallback = mean + F.normalize(forward.mean(-2), dim=-1) * reach[..., None]
    return torch.where((solvable & in_front)[..., None], point, fallback).to(c2w.dtype)


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


def orbit_poses(c2w: Tensor, n: int) -> Tensor:
    """``n`` poses (..., n, 4, 4) on a circle around the vertical axis (:func:`up_direction`) through
    :func:`scene_center`, passing through the cameras' mean centre (the first pose sits there), evenly spaced,
    each looking at the scene centre without roll."""
    if n < 1:
        raise ManyviewError(f"an orbit needs at least one camera, got {n}")
    c2w64 = c2w.double()
    up, center = up_direction(c2w64), scene_center(c2w64)
    mean = c2w64[..., :3, 3].mean(-2)
    axis_point = center + up * ((mean - center) * up).sum(-1, keepdim=True)
    radial = mean - axis_point
    radius = radial.norm(dim=-1)
    if bool((radius < 1e-6 * (mean - center).norm(dim=-1).clamp_min(1.0)).any()):
        raise ManyviewError("the inputs' mean centre lies on the vertical axis through the scene centre (looking "
                            "straight down or up): there is no circle to orbit on")
    e1 = radial / radius[..., None]
    e2 = torch.linalg.cross(up, e1)
    theta = torch.arange(n, dtype=torch.float64, device=c2w.device) * (2 * math.pi / n)
    ring = torch.cos(theta)[:, None] * e1[..., None, :] + torch.sin(theta)[:, None] * e2[..., None, :]
    eye = axis_point[..., None, :] + radius[..., None, None] * ring  # (..., n, 3)
    return look_at(eye, center[..., None, :], up[..., None, :]).to(c2w.dtype)


__all__ = ["apply_pose_normalization", "invert_pose_normalization", "look_at", "normalize_poses", "orbit_poses",
           "pose_normalization", "scene_center", "up_direction"]
