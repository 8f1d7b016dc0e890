"""The 2D student: a trainable copy of a teacher's backbone plus a light convolutional head to ``dim`` channels.

The head (1x1 conv, GELU, 3x3 conv, GELU, 1x1 conv) keeps the backbone's grid, so the student's features have the
teacher's stride. Batch-norm layers of the backbone (EfficientNet) stay in inference mode during training: their
ImageNet statistics are part of what the teacher knows, and a few synthetic views per step would overwrite them.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from manyview.features.teachers import Teacher


class FeatureHead(nn.Module):
    def __init__(self, c_in: int, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                                 nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Student2D(nn.Module):
    """images (N, 3, H, W) in [0, 1] -> features (N, dim, h, w) on the teacher's grid."""

    def __init__(self, teacher: Teacher, dim: int, hidden: int = 128, train_backbone: bool = True):
        super().__init__()
        self.backbone = copy.deepcopy(teacher)
        self.backbone.requires_grad_(train_backbone)
        self.head = FeatureHead(teacher.dim, dim, hidden)
        self.dim, self.stride = dim, teacher.stride

    def train(self, mode: bool = True) -> "Student2D":
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return self.backbone.grid(height, width)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


__all__ = ["FeatureHead", "Student2D"]
