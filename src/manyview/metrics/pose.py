"""Camera pose metrics: the PoseDiffusion / Fast3R pairwise protocol, and ATE.

For every pair i < j (``torch.combinations`` order) the relative pose inv(c2w_i) @ c2w_j is formed for the
prediction and the ground truth (Fast3R's ``camera_to_rel_deg``):
- rotation error: the angle of R_gt R_pred^T;
- translation error: the angle between the two relative translations up to sign, i.e. min(θ, 180° - θ),
  because PoseDiffusion compares acos(sqrt(1 - (1 - <t̂, t̂_gt>²))) = acos(|<t̂, t̂_gt>|). A zero translation
  gives 90°, as there.
Angles are computed exactly with atan2. PoseDiffusion instead linearly extrapolates acos beyond cos = 1 - 1e-4,
which reports rotations under 0.81° as 0.40°-0.81° (so identical cameras show 0.4° there, 0 here); accuracies
at thresholds >= 1° and mAA are unaffected.

RRA@t / RTA@t are the fractions of pairs with error < t. mAA(30) is the area under the accuracy curve of
max(rotation error, translation error): ``histogram="unit"`` is PoseDiffusion's ``calculate_auc_np`` (unit bins
[0,1), ..., [29,30], i.e. the mean accuracy at thresholds 1..30°, also used by VGGT); ``"histc"`` is Fast3R's
torch ``calculate_auc`` (``torch.histc`` with 31 bins over [0, 30]), which gave Fast3R's published numbers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.alignment import apply_sim3, umeyama
from manyview.geometry.rotation import rotation_angle
from manyview.geometry.transforms import invert_rigid
from manyview.scene.cameras import Cameras


def _pairs(n: int) -> tuple[Tensor, Tensor]:
    i, j = torch.combinations(torch.arange(n), 2).unbind(-1)
    return i, j


def relative_pose_errors(pred: Cameras, gt: Cameras) -> tuple[Tensor, Tensor]:
    """Rotation and translation angle errors in degrees, each (N(N-1)/2,), over all pairs i < j."""
    if tuple(pred.shape) != tuple(gt.shape) or len(pred.shape) != 1:
        raise ManyviewError(f"pred and gt must be (N,) cameras of the same N, "
                            f"got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if len(gt) < 2:
        raise ManyviewError("pairwise pose errors need at least 2 cameras")
    i, j = _pairs(len(gt))
    p, g = pred.c2w.double(), gt.c2w.to(pred.c2w.device).double()
    rel_p = invert_rigid(p[i]) @ p[j]
    rel_g = invert_rigid(g[i]) @ g[j]
    rot = torch.rad2deg(rotation_angle(rel_g[:, :3, :3] @ rel_p[:, :3, :3].transpose(-1, -2)))
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    cross = torch.cross(tp, tg, dim=-1).norm(dim=-1)
    dot = (tp * tg).sum(-1).abs()
    trans = torch.rad2deg(torch.atan2(cross, dot))
    degenerate = (tp.norm(dim=-1) == 0) | (tg.norm(dim=-1) == 0)
    trans = torch.where(degenerate, torch.full_like(trans, 90.0), trans)
    return rot, trans


def accuracy_at(errors: Tensor, threshold: float) -> float:
    """Fraction of errors strictly below ``threshold`` (RRA@t, RTA@t)."""
    return float((errors < threshold).double().mean())


def mean_average_accuracy(
    rot_errors: Tensor, trans_errors: Tensor, max_threshold: int = 30, histogram: Literal["unit", "histc"] = "unit"
) -> float:
    """mAA(max_threshold): area under the accuracy curve of max(rotation, translation) error, in [0, 1]."""
    err = torch.maximum(rot_errors, trans_errors).double()
    if histogram == "unit":
        edges = torch.arange(max_threshold + 1, dtype=torch.float64)
        counts = torch.stack([((err >= lo) & (err < hi)).sum() for lo, hi in zip(edges[:-1], edges[1:])])
        counts[-1] += (err == max_threshold).sum()  # numpy's last bin is closed
    elif histogram == "histc":
        counts = torch.histc(err, bins=max_threshold + 1, min=0, max=max_threshold)
    else:
        raise ManyviewError(f"unknown histogram {histogram!r} (expected 'unit' or 'histc')")
    return float((counts.double() / err.numel()).cumsum(0).mean())


def absolute_trajectory_error(pred: Cameras, gt: Cameras, with_scale: bool = True) -> float:
    """RMSE of camera centres after the Umeyama Sim(3) (SE(3) if ``with_scale=False``) that best maps the
    predicted centres onto the ground truth ones, in ground-truth units."""
    if tuple(pred.shape) != tuple(gt.shape) or len(pred.shape) != 1:
        raise ManyviewError(f"pred and gt must be (N,) cameras of the same N, "
                            f"got {tuple(pred.shape)} and {tuple(gt.shape)}")
    src, dst = pred.centers.double(), gt.centers.to(pred.device).double()
    scale, R, t = umeyama(src, dst, with_scale=with_scale)
    aligned = apply_sim3(src, scale, R, t)
    return float(((aligned - dst) ** 2).sum(-1).mean().sqrt())


def pose_metrics(
    pred: Cameras,
    gt: Cameras,
    thresholds: tuple[float, ...] = (5.0, 15.0),
    max_threshold: int = 30,
    histogram: Literal["unit", "histc"] = "unit",
) -> dict[str, float]:
    """RRA@t, RTA@t (percent), mAA (percent), mean / median angle errors (degrees) and ATE."""
    rot, trans = relative_pose_errors(pred, gt)
    out: dict[str, float] = {}
    for t in thresholds:
        out[f"RRA@{t:g}"] = 100.0 * accuracy_at(rot, t)
        out[f"RTA@{t:g}"] = 100.0 * accuracy_at(trans, t)
    out[f"mAA@{max_threshold}"] = 100.0 * mean_average_accuracy(rot, trans, max_threshold, histogram)
    out["rot_err_mean"], out["rot_err_median"] = float(rot.mean()), float(rot.median())
    out["trans_err_mean"], out["trans_err_median"] = float(trans.mean()), float(trans.median())
    out["ATE"] = absolute_trajectory_error(pred, gt) if len(gt) >= 3 else math.nan
    return out
