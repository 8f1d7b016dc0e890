"""Evaluation metrics: camera poses, reconstructed geometry, rendered images, multi-view feature consistency."""

from manyview.metrics.correspondence import CorrespondenceRecall, multiview_recall
from manyview.metrics.geometry import reconstruction_metrics
from manyview.metrics.image import lpips, lpips_available, psnr, ssim
from manyview.metrics.pose import (
    absolute_trajectory_error,
    accuracy_at,
    mean_average_accuracy,
    pose_metrics,
    relative_pose_errors,
)

__all__ = [
    "CorrespondenceRecall", "absolute_trajectory_error", "accuracy_at", "lpips", "lpips_available",
    "mean_average_accuracy", "multiview_recall", "pose_metrics", "psnr", "reconstruction_metrics",
    "relative_pose_errors", "ssim",
]
