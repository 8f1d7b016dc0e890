"""The four primitive shapes in their canonical frames: ray intersection, surface frame and exact distance.

A primitive is a canonical shape placed by a rigid pose and stretched by a size (3,):

| shape    | canonical shape                        | size                        |
| -------- | -------------------------------------- | --------------------------- |
| box      | cube [-1, 1]^3                         | half extents (a, b, c)      |
| sphere   | unit sphere                            | (r, r, r)                   |
| cylinder | x^2 + y^2 <= 1, z in [-1, 1], capped   | (r, r, half height)         |
| quad     | square [-1, 1]^2 at z = 0, two-sided   | (half width, half height, 1)|

Rays are mapped into the canonical frame by an affine map, which keeps the ray parameter t unchanged, so the
t found there is the t of the world ray. Distances (``signed_distance``) work in the metric local frame
(rigid pose, no scaling) and are exact Euclidean distances, which makes them an independent check of the
intersections.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SHAPES = ("box", "sphere", "cylinder", "quad")
BOX, SPHERE, CYLINDER, QUAD = range(4)
SOLID = (BOX, SPHERE, CYLINDER)

Vec = tuple[Tensor, Tensor, Tensor]  # x, y, z components, broadcastable to each other


def _inf_like(t: Tensor) -> Tensor:
    return torch.full_like(t, math.inf)


def _nearest(t0: Tensor, t1: Tensor, eps: float) -> Tensor:
    """Smallest of two candidate hits that lies in front of the origin (inf if neither does)."""
    t0 = torch.where(t0 > eps, t0, math.inf)
    t1 = torch.where(t1 > eps, t1, math.inf)
    return torch.minimum(t0, t1)


def intersect_box(o: Vec, d: Vec, eps: float) -> Tensor:
    """Slab test against [-1, 1]^3; a ray starting inside hits the far wall."""
    tnear = tfar = None
    for oi, di in zip(o, d):
        inv = 1.0 / di  # +-inf for axis-parallel rays: the slab then spans all t or none
        a, b = (-1.0 - oi) * inv, (1.0 - oi) * inv
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        tnear = lo if tnear is None else torch.maximum(tnear, lo)
        tfar = hi if tfar is None else torch.minimum(tfar, hi)
    t = torch.where(tnear > eps, tnear, tfar)
    return torch.where((tnear <= tfar) & (t > eps), t, math.inf)


def intersect_sphere(o: Vec, d: Vec, eps: float) -> Tensor:
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - 1.0
    disc = b * b - a * c
    sq = disc.clamp(min=0).sqrt()
    t = _nearest((-b - sq) / a, (-b + sq) / a, eps)
    return torch.where(disc >= 0, t, math.inf)


def intersect_cylinder(o: Vec, d: Vec, eps: float) -> Tensor:
    a = d[0] * d[0] + d[1] * d[1]
    b = o[0] * d[0] + o[1] * d[1]
    c = o[0] * o[0] + o[1] * o[1] - 1.0
    disc = b * b - a * c
    sq = disc.clamp(min=0).sqrt()
    best = None
    for t in ((-b - sq) / a, (-b + sq) / a):  # the side, between the caps
        z = o[2] + t * d[2]
        ok = (disc >= 0) & (z.abs() <= 1.0) & (t > eps)
        t = torch.where(ok, t, math.inf)
        best = t if best is None else torch.minimum(best, t)
    inv = 1.0 / d[2]
    for cap in (-1.0, 1.0):  # the caps, inside the rim
        t = (cap - o[2]) * inv
        x, y = o[0] + t * d[0], o[1] + t * d[1]
        ok = (x * x + y * y <= 1.0) & (t > eps)
        best = torch.minimum(best, torch.where(ok, t, math.inf))
    return best


def intersect_quad(o: Vec, d: Vec, eps: float) -> Tensor:
    t = -o[2] / d[2]
    x, y = o[0] + t * d[0], o[1] + t * d[1]
    ok = (x.abs() <= 1.0) & (y.abs() <= 1.0) & (t > eps)
    return torch.where(ok, t, math.inf)


_INTERSECT = {BOX: intersect_box, SPHERE: intersect_sphere, CYLINDER: intersect_cylinder, QUAD: intersect_quad}


def intersect(shape: int, o: Vec, d: Vec, eps: float = 1e-4) -> Tensor:
    """Ray parameter of the nearest hit with t > eps, inf for a miss; canonical-frame origins and directions."""
    return _INTERSECT[shape](o, d, eps)


def surface_frame(shape: int, p: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """At canonical surface points p (M, 3) of primitives with sizes (M, 3):

    returns the local-frame normal (M, 3) (unit, outward for solids, +z for quads), metric surface
    coordinates uv (M, 2) for texturing, and a face index (M,) (box faces and cylinder caps get their own
    coordinates, offset so that their textures differ).
    """
    q = p * size
    zero = torch.zeros_like(p[:, 0])
    if shape == QUAD:
        n = torch.stack([zero, zero, torch.ones_like(zero)], -1)
        return n, q[:, :2], zero.long()
    if shape == SPHERE:
        n = torch.nn.functional.normalize(p / size, dim=-1)
        r = size.mean(-1)
        uv = torch.stack([torch.atan2(p[:, 1], p[:, 0]) * r, torch.asin(p[:, 2].clamp(-1, 1)) * r], -1)
        return n, uv, zero.long()
    if shape == BOX:
        gap = (1.0 - p.abs()) * size  # metric distance to each pair of faces; the nearest is the one hit
        axis = gap.argmin(-1)
        sign = torch.where(p.gather(1, axis[:, None])[:, 0] >= 0, 1.0, -1.0)
        n = torch.nn.functional.one_hot(axis, 3).to(p.dtype) * sign[:, None]
        # In-plane axes of each face: x -> (y, z), y -> (x, z), z -> (x, y).
        first = torch.where(axis == 0, 1, 0)
        second = torch.where(axis == 2, 1, 2)
        face = 2 * axis + (sign > 0).long()
        uv = torch.stack([q.gather(1, first[:, None])[:, 0] + 13.7 * face, q.gather(1, second[:, None])[:, 0]], -1)
        return n, uv, face
    if shape == CYLINDER:
        rho = (p[:, 0] ** 2 + p[:, 1] ** 2).sqrt()
        on_cap = (1.0 - p[:, 2].abs()) * size[:, 2] < (1.0 - rho) * size[:, 0]
        sign = torch.where(p[:, 2] >= 0, 1.0, -1.0)
        radial = torch.stack([p[:, 0] / size[:, 0], p[:, 1] / size[:, 1], zero], -1)
        side_n = torch.nn.functional.normalize(radial, dim=-1)
        cap_n = torch.stack([zero, zero, sign], -1)
        n = torch.where(on_cap[:, None], cap_n, side_n)
        face = torch.where(on_cap, 1 + (sign > 0).long(), 0)
        side_uv = torch.stack([torch.atan2(p[:, 1], p[:, 0]) * size[:, 0], q[:, 2]], -1)
        cap_uv = q[:, :2] + 13.7 * face[:, None]
        return n, torch.where(on_cap[:, None], cap_uv, side_uv), face
    raise ValueError(f"unknown shape code {shape}")


def signed_distance(shape: int, q: Tensor, size: Tensor) -> Tensor:
    """Exact Euclidean distance from metric local points q (..., 3) to the surface; negative inside solids.

    Quads are thin, so their distance is unsigned. Spheres must have equal sizes (they are spheres, not
    ellipsoids).
    """
    if shape == SPHERE:
        return q.norm(dim=-1) - size[..., 0]
    if shape == BOX:
        d = q.abs() - size
        return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)
    if shape == CYLINDER:
        dr = q[..., :2].norm(dim=-1) - size[..., 0]
        dz = q[..., 2].abs() - size[..., 2]
        outside = torch.stack([dr.clamp(min=0), dz.clamp(min=0)], -1).norm(dim=-1)
        return outside + torch.maximum(dr, dz).clamp(max=0)
    if shape == QUAD:
        dx = (q[..., 0].abs() - size[..., 0]).clamp(min=0)
        dy = (q[..., 1].abs() - size[..., 1]).clamp(min=0)
        return torch.stack([dx, dy, q[..., 2]], -1).norm(dim=-1)
    raise ValueError(f"unknown shape code {shape}")
