"""Ground-truth samples from synthetic scenes, and the seeds that keep evaluation scenes out of training.

Seeds: training draws scene seeds from ``[0, EVAL_SEED_START)``; held-out evaluation scene ``i`` has seed
``EVAL_SEED_START + i`` (:func:`eval_scene_seed`), so no evaluation scene is ever trained on. Every consumer (the
training streams, the reconstruction and novel-view evaluations) takes its seeds from here.

A multi-view sample (:func:`views_to_sample`) is a dict::

    images    (N, 3, H, W) float32 in [0, 1]
    pts3d     (N, H, W, 3) float32 ground-truth world points (from z-depth; 0 where invalid)
    valid     (N, H, W)    bool, depth > 0 (and inside the mask, when there is one)
    c2w       (N, 4, 4)    float32 camera-to-world, OpenCV axes
    fxfycxcy  (N, 4)       float32 pixels

A trajectory (:func:`trajectory_frames`) is one scene rendered along its camera path as uint8 frames with their
cameras: the form novel-view training and evaluation draw windows of frames from.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.projection import depth_to_pointmap
from manyview.scene import Views
from manyview.synth.generate import generate
from manyview.synth.scene import SceneKind

EVAL_SEED_START = 10**9
"""Scene seeds >= this are held out for evaluation; training draws scene seeds from [0, EVAL_SEED_START)."""


def eval_scene_seed(i: int) -> int:
    """Seed of held-out evaluation scene ``i`` (never drawn for training)."""
    if i < 0:
        raise ManyviewError(f"evaluation scene index must be >= 0, got {i}")
    return EVAL_SEED_START + i


def views_to_sample(views: Views, source: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """``Views`` with cameras and depth -> the sample dict (see the module docstring)."""
    if views.cameras is None:
        raise ManyviewError("views have no cameras; a ground-truth sample needs poses", source)
    if views.depths is None:
        raise ManyviewError("views have no depth maps; a ground-truth sample needs depth", source)
    cams = views.cameras
    depth = views.depths.float()
    valid = depth > 0
    if views.masks is not None:
        valid &= views.masks.bool()
    pts = depth_to_pointmap(depth, cams.fxfycxcy.float(), cams.c2w.float()) * valid[..., None]
    return {"images": views.images.float().clamp(0, 1), "pts3d": pts.float(), "valid": valid,
            "c2w": cams.c2w.float(), "fxfycxcy": cams.fxfycxcy.float()}


def synthetic_sample(scene_seed: int, kind: SceneKind, num_views: int, height: int, width: int,
                     camera_seed: int = 0, supersample: int = 1, **trajectory) -> dict[str, Tensor]:
    """One synthetic scene rendered from ``num_views`` cameras, as a sample dict (plus ``scene_seed``).

    ``trajectory``: keyword arguments of the scene kind's camera path (e.g. ``arc_deg`` of an orbit)."""
    _, views = generate(scene_seed, kind=kind, num_views=num_views, height=height, width=width,
                        supersample=supersample, camera_seed=camera_seed, **trajectory)
    sample = views_to_sample(views)
    sample["scene_seed"] = torch.tensor(scene_seed, dtype=torch.int64)
    return sample


def eval_sample(i: int, kind: SceneKind, num_views: int, height: int, width: int,
                supersample: int = 1) -> dict[str, Tensor]:
    """Held-out evaluation scene ``i`` of ``kind`` (the same for every caller)."""
    return synthetic_sample(eval_scene_seed(i), kind, num_views, height, width, camera_seed=0,
                            supersample=supersample)


def trajectory_frames(seed: int, kinds: Sequence[SceneKind], frames: int, size: int, supersample: int = 1,
                      orbit_arc_deg: float = 90.0) -> tuple[Tensor, Tensor, Tensor]:
    """Scene ``seed`` (its kind alternates with the seed through ``kinds``) rendered along its trajectory at
    ``size`` x ``size`` -> uint8 images (F, 3, S, S), fxfycxcy (F, 4), c2w (F, 4, 4) float32.

    Object scenes are orbited over ``orbit_arc_deg``; rooms are walked through."""
    if not kinds:
        raise ManyviewError("kinds must name at least one scene kind")
    kind = kinds[seed % len(kinds)]
    kwargs = {"arc_deg": orbit_arc_deg} if kind == "object" else {}
    _, views = generate(seed, kind, frames, size, size, supersample=supersample, **kwargs)
    images = (views.images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, views.cameras.fxfycxcy.float(), views.cameras.c2w.float()


__all__ = ["EVAL_SEED_START", "eval_sample", "eval_scene_seed", "synthetic_sample", "trajectory_frames",
           "views_to_sample"]
