"""Cameras perturbed by known noise: the initialisation bundle adjustment must recover from (shared by the
refinement tests and the fast3r+ba evaluation test)."""

import math

import torch

from manyview.geometry.rotation import axis_angle_to_matrix
from manyview.scene import Cameras


def perturbed(cameras: Cameras, rotation_deg: float, translation: float, focal: float, seed: int = 0) -> Cameras:
    """Each camera turned by ``rotation_deg`` about a random axis, its centre moved by ``translation`` x the mean
    distance of the centres from their mean (Gaussian per axis), every focal length scaled by ``focal``."""
    g = torch.Generator().manual_seed(seed)
    cams = cameras.to(torch.float64)
    axes = torch.randn(len(cams), 3, generator=g, dtype=torch.float64)
    turn = axis_angle_to_matrix(axes / axes.norm(dim=-1, keepdim=True) * math.radians(rotation_deg))
    c2w = cams.c2w.clone()
    c2w[:, :3, :3] = turn @ c2w[:, :3, :3]
    spread = (cams.centers - cams.centers.mean(0)).norm(dim=-1).mean()
    c2w[:, :3, 3] += torch.randn(len(cams), 3, generator=g, dtype=torch.float64) * translation * spread
    scale = torch.tensor([focal, focal, 1.0, 1.0], dtype=torch.float64)
    return Cameras(cams.fxfycxcy * scale, c2w, cams.image_size)
