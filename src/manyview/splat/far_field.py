"""Initial points for what lies far behind the scene: a shell of points round the cameras, coloured from the photos.

SfM triangulates the textured middle distance; sky, distant buildings and trees get few or no points, and
densification grows Gaussians only near existing ones, so those regions of a photo stay empty (the background
colour shows through) or are filled by floaters close to the cameras, which break in every novel view. A shell
of points at several times the cameras' distance gives the far field Gaussians to start from (as splatting
pipelines for outdoor captures add a sky sphere). Each point takes the colour of the first photo it projects
into (the mean photo colour where none sees it).
"""

from __future__ import annotations

import math

import torch

from manyview.scene import PointCloud, Views


def fibonacci_sphere(n: int, dtype=torch.float64) -> torch.Tensor:
    """(n, 3) nearly uniform unit vectors (the Fibonacci lattice)."""
    k = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * k / n
    r = (1 - z * z).clamp_min(0).sqrt()
    phi = k * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def far_field_points(views: Views, n: int, radius: float, ids: list[int] | None = None) -> PointCloud:
    """``n`` points on the sphere of ``radius`` round the mean camera centre, coloured from the photos ``ids``
    (default all): each takes the pixel of the first photo whose image it projects into."""
    cams = views.cameras.to(torch.float64)
    ids = list(range(len(views))) if ids is None else ids
    center = cams.centers[ids].mean(0)
    xyz = center + radius * fibonacci_sphere(n)
    images = views.images[ids].to(torch.float64)
    rgb = images.mean((0, 2, 3)).expand(n, 3).clone()
    seen = torch.zeros(n, dtype=torch.bool)
    h, w = views.height, views.width
    for k, i in enumerate(ids):
        w2c = torch.linalg.inv(cams.c2w[i])
        local = xyz @ w2c[:3, :3].T + w2c[:3, 3]
        fx, fy, cx, cy = cams.fxfycxcy[i].tolist()
        z = local[:, 2]
        safe = z.clamp_min(1e-9)
        u, v = fx * local[:, 0] / safe + cx, fy * local[:, 1] / safe + cy
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & ~seen
        cols, rows = u[inside].long(), v[inside].long()
        rgb[inside] = images[k, :, rows, cols].T
        seen |= inside
    return PointCloud(xyz, rgb)


__all__ = ["far_field_points", "fibonacci_sphere"]
