"""Training losses.

Fast3R (reference/fast3r.md §5.1, the released `ConfLossMultiviewV2(Regr3DMultiviewV4(L21, "avg_dis"), alpha=0.2)`):
ground truth is expressed in view 0's camera frame (global head) and in each view's own frame (local head);
prediction and ground truth are each divided by their own mean distance to the origin over valid pixels (all views
of a sample together for the global head, each view alone for the local head); the per-pixel Euclidean error is
weighted by the confidence with a -alpha * log(conf) regulariser, averaged over valid pixels per view, and the
2N view terms are averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.geometry.transforms import invert_rigid


def _mean_distance(points: Tensor, valid: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Mean ||x|| over valid entries, reduced over ``dims`` (kept), at least 1e-8."""
    dist = points.norm(dim=-1) * valid
    count = valid.sum(dim=dims, keepdim=True).clamp_min(1)
    return (dist.sum(dim=dims, keepdim=True) / count).clamp_min(1e-8)


def _to_frame(points_world: Tensor, c2w: Tensor) -> Tensor:
    """World points (B, N, H, W, 3) into the camera frames c2w (B, N, 4, 4) (one per view) or (B, 4, 4)."""
    w2c = invert_rigid(c2w)
    if w2c.dim() == 3:  # one frame per sample
        w2c = w2c[:, None]
    R, t = w2c[:, :, None, None, :3, :3], w2c[:, :, None, None, :3, 3]
    return (R @ points_world[..., None])[..., 0] + t


def fast3r_loss(
    pred_global: Tensor, conf_global: Tensor, pred_local: Tensor, conf_local: Tensor,
    gt_world: Tensor, gt_c2w: Tensor, valid: Tensor, alpha: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Confidence-weighted, scale-normalised pointmap regression for both heads.

    pred_*: (B, N, H, W, 3); conf_*: (B, N, H, W) (> 1); gt_world: (B, N, H, W, 3) world points;
    gt_c2w: (B, N, 4, 4); valid: (B, N, H, W) bool. Returns the loss and unweighted regression errors for logging.
    """
    valid_f = valid.to(pred_global.dtype)
    gt_global = _to_frame(gt_world, gt_c2w[:, 0])
    gt_local = _to_frame(gt_world, gt_c2w)

    sample_dims, view_dims = (1, 2, 3), (2, 3)
    err_global = (pred_global / _mean_distance(pred_global, valid_f, sample_dims)[..., None]
                  - gt_global / _mean_distance(gt_global, valid_f, sample_dims)[..., None]).norm(dim=-1)
    err_local = (pred_local / _mean_distance(pred_local, valid_f, view_dims)[..., None]
                 - gt_local / _mean_distance(gt_local, valid_f, view_dims)[..., None]).norm(dim=-1)

    count = valid_f.sum(dim=view_dims).clamp_min(1)  # (B, N) valid pixels per view

    def per_view(err: Tensor, conf: Tensor) -> Tensor:
        term = (err * conf - alpha * torch.log(conf)) * valid_f
        return term.sum(dim=view_dims) / count  # (B, N)

    loss = 0.5 * (per_view(err_global, conf_global) + per_view(err_local, conf_local)).mean()
    regr = lambda e: ((e * valid_f).sum(dim=view_dims) / count).mean().detach()  # noqa: E731
    return loss, {"regr_global": regr(err_global), "regr_local": regr(err_local)}
