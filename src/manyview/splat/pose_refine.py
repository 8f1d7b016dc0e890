"""Camera pose refinement during splat training (gsplat's ``pose_opt``): a learnable se(3) correction per
training camera, ``c2w' = c2w @ delta`` with ``delta`` a rotation (axis-angle ``w``) and a translation ``t`` in
the camera's own frame, both zero at the start.

The rasterizers are differentiable with respect to the Gaussians but not all of them with respect to the
cameras (the numba CPU backend is not), so the correction moves the world instead of the camera: rendering the
Gaussians under the rigid map ``T = c2w delta^-1 c2w^-1`` from ``c2w`` gives exactly the image of the untouched
Gaussians from ``c2w'`` (centres, rotations and therefore every projected footprint). Only the spherical-harmonics
view direction is the world's and not the camera's: it differs by the correction's rotation, a fraction of a
degree for the corrections this fits. Gradients reach ``w`` and ``t`` through the moved centres and rotations,
with any backend.

Translations are stored in units of the scene extent, so one learning rate suits every scene scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.geometry.rotation import quaternion_to_matrix
from manyview.splat.gaussians import Gaussians

_EPS = 1e-12  # keeps the rotation angle's gradient finite at zero


def _half_angle_quaternion(w: Tensor) -> tuple[Tensor, Tensor]:
    """(cos(theta/2), sin(theta/2) / theta) of axis-angle vectors ``w`` (..., 3), theta = |w|, smooth at 0."""
    theta = (w.square().sum(-1) + _EPS).sqrt()
    half = 0.5 * theta
    return torch.cos(half), torch.sin(half) / theta


def delta_quaternion(w: Tensor) -> Tensor:
    """(..., 4) unit quaternion (w, x, y, z) of the rotation by axis-angle ``w`` (..., 3)."""
    c, s = _half_angle_quaternion(w)
    return torch.cat([c[..., None], s[..., None] * w], dim=-1)


def _quaternion_product(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (w, x, y, z) quaternions (a broadcasts over b)."""
    aw, av = a[..., :1], a[..., 1:]
    bw, bv = b[..., :1], b[..., 1:]
    return torch.cat([aw * bw - (av * bv).sum(-1, keepdim=True),
                      aw * bv + bw * av + torch.cross(av.expand_as(bv), bv, dim=-1)], dim=-1)


def refined_c2w(c2w: Tensor, delta: Tensor, extent: float = 1.0) -> Tensor:
    """(4, 4) ``c2w @ delta`` for one camera's correction ``delta`` = (w, t / extent) (6,)."""
    rot = quaternion_to_matrix(delta_quaternion(delta[:3]).to(c2w.dtype))
    d = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    d = torch.cat([torch.cat([rot, (delta[3:] * extent).to(c2w.dtype)[:, None]], 1), d[3:]], 0)
    return c2w @ d


def move_world(gaussians: Gaussians, c2w: Tensor, delta: Tensor, extent: float = 1.0) -> Gaussians:
    """The Gaussians under ``T = c2w delta^-1 c2w^-1``: seen from ``c2w`` they look as the originals do from
    ``refined_c2w(c2w, delta, extent)``. Differentiable in the Gaussians and in ``delta``."""
    dtype = gaussians.means.dtype
    c2w = c2w.to(dtype)
    rc, center = c2w[:3, :3], c2w[:3, 3]
    w, t = delta[:3].to(dtype), delta[3:].to(dtype) * extent
    rd = quaternion_to_matrix(delta_quaternion(w))
    # X' = Rc Rd^T (Rc^T (X - c) - t) + c, written on row vectors
    local = (gaussians.means - center) @ rc
    means = ((local - t) @ rd) @ rc.T + center
    # the rotation of T is Rc Rd^T Rc^T: the inverse rotation about the axis Rc w
    c, s = _half_angle_quaternion(w)
    q_t = torch.cat([c[None], -s * (rc @ w)])
    quats = _quaternion_product(q_t, gaussians.quats)
    return Gaussians(means, gaussians.log_scales, quats, gaussians.opacity_logits, gaussians.sh_dc, gaussians.sh_rest)


class PoseRefinement(torch.nn.Module):
    """A zero-initialised se(3) correction (axis-angle, translation / extent) per camera, each its own parameter
    (an optimiser per view moves only the view of the step)."""

    def __init__(self, n: int, extent: float = 1.0, device=None):
        super().__init__()
        self.extent = float(extent)
        self.per_view = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(6, device=device)) for _ in range(n)])

    @property
    def deltas(self) -> Tensor:
        """(n, 6) the current corrections."""
        return torch.stack(list(self.per_view))

    def forward(self, gaussians: Gaussians, c2w: Tensor, i: int) -> Gaussians:
        """Gaussians moved so that camera ``c2w`` sees them as camera ``i`` refined would."""
        return move_world(gaussians, c2w, self.per_view[i], self.extent)

    def refined(self, c2w: Tensor, i: int) -> Tensor:
        """(4, 4) the refined camera-to-world of camera ``i``."""
        return refined_c2w(c2w, self.per_view[i].detach(), self.extent)


__all__ = ["PoseRefinement", "delta_quaternion", "move_world", "refined_c2w"]
