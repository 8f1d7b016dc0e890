"""Multi-view consistency of a feature network on held-out synthetic scenes (exact depth and cameras).

:func:`synthetic_recall` renders held-out evaluation scenes (seeds from :data:`manyview.synth.samples.EVAL_SEED_START`
on, never trained on), runs a feature function on each scene's views and pools the dense correspondence recall of
:mod:`manyview.metrics.correspondence` over every pair of views, binned by the angle between them. Object scenes are
orbited all the way round, so their pairs span every angle bin; rooms are walked through (small angles).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from manyview.metrics.correspondence import CorrespondenceRecall, multiview_recall
from manyview.synth.samples import eval_scene_seed
from manyview.synth.scene import SceneKind


def synthetic_recall(feature_fn: Callable[[Tensor], Tensor], num_scenes: int = 4,
                     kinds: Sequence[SceneKind] = ("object", "room"), num_views: int = 6, size: int = 224,
                     grid_stride: int | None = 4, supersample: int = 2) -> CorrespondenceRecall:
    """Correspondence recall of ``feature_fn`` (images (V, 3, S, S) in [0, 1] -> features (V, C, h, w)) on
    ``num_scenes`` held-out scenes of each kind. ``grid_stride``: features are resampled to an
    (S / grid_stride)-square grid before matching (None: matched on their own grid)."""
    from manyview.synth import generate

    recall = CorrespondenceRecall()
    grid = None if grid_stride is None else (size // grid_stride, size // grid_stride)
    for kind in kinds:
        for i in range(num_scenes):
            kwargs = {"arc_deg": 360.0} if kind == "object" else {}
            _, views = generate(eval_scene_seed(i), kind, num_views, size, size, supersample=supersample, **kwargs)
            with torch.no_grad():
                feats = feature_fn(views.images.float().clamp(0, 1))
            cams = views.cameras
            multiview_recall(feats, views.depths.float(), cams.fxfycxcy.float(), cams.c2w.float(), grid=grid,
                             recall=recall)
    return recall


__all__ = ["synthetic_recall"]
