"""Reconstruction: what a reconstruction method returns.

Cameras and per-view pointmaps in one world frame (Fast3R: the camera frame of view 0), per-view confidences,
and the confidence-filtered coloured point cloud fused from all views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud


@dataclass(frozen=True, eq=False)
class Reconstruction:
    cameras: Cameras  # (N,)
    pointmaps: Tensor  # (N, H, W, 3) world coordinates
    confidences: Tensor  # (N, H, W), larger = more certain
    points: PointCloud
    images: Tensor | None = None  # (N, 3, H, W) in [0, 1], the images the method saw
    names: list[str] = field(default_factory=list)
    local_pointmaps: Tensor | None = None  # (N, H, W, 3) each in its own camera frame
    local_confidences: Tensor | None = None  # (N, H, W)
    info: dict = field(default_factory=dict)  # timings, memory, method settings

    def __post_init__(self):
        n = len(self.cameras)
        if self.pointmaps.dim() != 4 or self.pointmaps.shape[0] != n or self.pointmaps.shape[-1] != 3:
            raise ValueError(f"pointmaps must be ({n}, H, W, 3), got {tuple(self.pointmaps.shape)}")
        if tuple(self.confidences.shape) != tuple(self.pointmaps.shape[:-1]):
            raise ValueError("confidences must match pointmaps (N, H, W)")
        if self.names and len(self.names) != n:
            raise ValueError(f"{n} cameras but {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.cameras)
