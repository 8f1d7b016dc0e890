"""PointCloud: xyz with optional colours, confidences and normals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class PointCloud:
    xyz: Tensor  # (P, 3)
    rgb: Tensor | None = None  # (P, 3) float in [0, 1]
    confidence: Tensor | None = None  # (P,)
    normals: Tensor | None = None  # (P, 3)

    def __post_init__(self):
        if self.xyz.dim() != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"xyz must be (P, 3), got {tuple(self.xyz.shape)}")
        p = self.xyz.shape[0]
        for name, t, shape in (("rgb", self.rgb, (p, 3)), ("confidence", self.confidence, (p,)),
                               ("normals", self.normals, (p, 3))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def select(self, index: Tensor) -> "PointCloud":
        """Subset by boolean mask or index tensor."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return PointCloud(self.xyz[index], pick(self.rgb), pick(self.confidence), pick(self.normals))

    def to(self, *args, **kwargs) -> "PointCloud":
        move = lambda t: None if t is None else t.to(*args, **kwargs)  # noqa: E731
        return PointCloud(move(self.xyz), move(self.rgb), move(self.confidence), move(self.normals))

    @staticmethod
    def cat(clouds: list["PointCloud"]) -> "PointCloud":
        def join(name):
            parts = [getattr(c, name) for c in clouds]
            return None if any(p is None for p in parts) else torch.cat(parts)
        return PointCloud(torch.cat([c.xyz for c in clouds]), join("rgb"), join("confidence"), join("normals"))

    def subsample(self, max_points: int, seed: int = 0) -> "PointCloud":
        """At most ``max_points`` points, chosen deterministically."""
        if len(self) <= max_points:
            return self
        g = torch.Generator().manual_seed(seed)
        return self.select(torch.randperm(len(self), generator=g)[:max_points].to(self.xyz.device))
