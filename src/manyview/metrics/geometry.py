"""Point cloud reconstruction metrics (the Spann3R / Fast3R protocol), with scipy's cKDTree.

- accuracy: distance from each predicted point to its nearest ground-truth point (mean and median);
- completeness: distance from each ground-truth point to its nearest predicted point (mean and median);
- chamfer: (accuracy mean + completeness mean) / 2 (DTU's "overall");
- normal consistency: mean |<n_pred, n_gt>| over the same nearest-neighbour pairs, both directions
  (``nc_accuracy``, ``nc_completeness``, ``normal_consistency`` their average), when both clouds have normals;
- with ``fscore_threshold``: precision / recall (fractions of distances below it) and their F-score.

Optional Sim(3) alignment first: Fast3R aligns the prediction to the ground truth with a (weighted) Umeyama fit
over corresponding points (same pixels), then measures; pass the correspondences as ``align_pairs``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.alignment import apply_sim3, umeyama
from manyview.scene.pointcloud import PointCloud


def _np(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def nearest_neighbors(query, reference) -> tuple[np.ndarray, np.ndarray]:
    """For each query point (P, 3): distance to and index of its nearest reference point (Q, 3)."""
    q, r = _np(query), _np(reference)
    if q.ndim != 2 or q.shape[1] != 3 or r.ndim != 2 or r.shape[1] != 3 or len(r) == 0:
        raise ManyviewError(f"nearest_neighbors needs (P, 3) queries and a non-empty (Q, 3) reference, got "
                            f"{q.shape} and {r.shape}")
    dist, idx = cKDTree(r).query(q, k=1)
    return dist, idx


def sim3_align(pred_points: Tensor, gt_points: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Umeyama Sim(3) (scale, R, t) mapping corresponding pred points (P, 3) onto gt points (P, 3)."""
    if pred_points.shape != gt_points.shape:
        raise ManyviewError(f"alignment needs corresponding points of one shape, got {tuple(pred_points.shape)} "
                            f"and {tuple(gt_points.shape)}")
    return umeyama(pred_points.double(), gt_points.double(), None if weights is None else weights.double())


def reconstruction_metrics(
    pred: PointCloud | Tensor,
    gt: PointCloud | Tensor,
    align_pairs: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor] | None = None,
    fscore_threshold: float | None = None,
) -> dict[str, float]:
    """Accuracy, completeness, chamfer (and normal consistency, F-score) of ``pred`` against ``gt``.

    pred, gt: PointCloud or (P, 3) tensors. ``align_pairs`` = (pred_corr (M, 3), gt_corr (M, 3)[, weights (M,)]):
    when given, the Sim(3) fitted on these correspondences is applied to ``pred`` (and rotates its normals).
    """
    pred_pc = pred if isinstance(pred, PointCloud) else PointCloud(torch.as_tensor(pred))
    gt_pc = gt if isinstance(gt, PointCloud) else PointCloud(torch.as_tensor(gt))
    if len(pred_pc) == 0 or len(gt_pc) == 0:
        raise ManyviewError(f"reconstruction metrics need non-empty clouds, got {len(pred_pc)} and {len(gt_pc)} points")
    xyz, normals = pred_pc.xyz.double(), pred_pc.normals
    out: dict[str, float] = {}
    if align_pairs is not None:
        scale, R, t = sim3_align(*align_pairs)
        xyz = apply_sim3(xyz.to(R.device), scale, R, t)
        if normals is not None:
            normals = normals.double().to(R.device) @ R.T
        out["align_scale"] = float(scale)
    acc_d, acc_i = nearest_neighbors(xyz, gt_pc.xyz)
    comp_d, comp_i = nearest_neighbors(gt_pc.xyz, xyz)
    out.update(
        accuracy=float(acc_d.mean()), accuracy_median=float(np.median(acc_d)),
        completeness=float(comp_d.mean()), completeness_median=float(np.median(comp_d)),
    )
    out["chamfer"] = (out["accuracy"] + out["completeness"]) / 2
    if normals is not None and gt_pc.normals is not None:
        n_pred = _np(normals)
        n_pred /= np.linalg.norm(n_pred, axis=-1, keepdims=True).clip(1e-12)
        n_gt = _np(gt_pc.normals)
        n_gt /= np.linalg.norm(n_gt, axis=-1, keepdims=True).clip(1e-12)
        nc_acc = np.abs((n_pred * n_gt[acc_i]).sum(-1))
        nc_comp = np.abs((n_gt * n_pred[comp_i]).sum(-1))
        out.update(nc_accuracy=float(nc_acc.mean()), nc_completeness=float(nc_comp.mean()),
                   normal_consistency=float((nc_acc.mean() + nc_comp.mean()) / 2))
    if fscore_threshold is not None:
        precision = float((acc_d < fscore_threshold).mean())
        recall = float((comp_d < fscore_threshold).mean())
        out.update(precision=precision, recall=recall,
                   fscore=0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return out
