"""ConDense: a 2D and a 3D student whose features agree through rendering, the 2D one anchored to its teacher.

One forward pass over a batch of scenes, each seen in V posed views with P points sampled on its surfaces:

- the 2D student (:class:`~manyview.features.student2d.Student2D`) gives per-pixel features (V, C, h, w) on the
  teacher's grid;
- the 3D student (:class:`~manyview.features.student3d.PointStudent`) gives per-point features (P, C), which
  :func:`~manyview.features.render.render_features` composites into every view's grid (blob radii from the point
  spacing, one opacity for all points: the density comes from the geometry);
- the anchor decoder (a 1 x 1 convolution) maps the 2D student's features back to the teacher's: the student's
  features must keep what the teacher knows (reference/condense.md §1.2: consistency alone degrades the
  features), whatever the dimension C.

The losses live with the training task (:mod:`manyview.train.condense_task`). Weights are saved and loaded in the
Hugging Face folder layout (``config.json`` + ``model.safetensors``, :class:`~manyview.hub.HubMixin`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, NamedTuple

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.features.render import grid_intrinsics, point_radii, render_features
from manyview.features.student2d import Student2D
from manyview.features.student3d import PointBackboneConfig, PointStudent
from manyview.features.teachers import DEFAULT_TEACHER, TEACHERS, Teacher, teacher_architecture
from manyview.hub import HubMixin


@dataclass
class ConDenseConfig:
    teacher: str = DEFAULT_TEACHER
    """The teacher whose backbone the 2D student fine-tunes (and whose features anchor it)."""
    dim: int = 64
    """Feature dimension C of both students."""
    head_hidden: int = 128
    train_backbone: bool = True
    """Fine-tune the 2D student's copy of the teacher backbone (False: only its head learns)."""
    point: PointBackboneConfig = field(default_factory=PointBackboneConfig)
    radius_k: int = 8
    """Blob radius = ``radius_scale`` x mean distance to the ``radius_k`` nearest points."""
    radius_scale: float = 1.0
    opacity: float = 0.9
    """Peak opacity of every point's blob."""

    def __post_init__(self):
        if isinstance(self.point, Mapping):
            self.point = PointBackboneConfig(**self.point)
        if self.teacher not in TEACHERS:
            raise ManyviewError(f"unknown teacher {self.teacher!r}; choose from {', '.join(TEACHERS)}")
        if self.dim < 1:
            raise ManyviewError(f"feature dimension must be at least 1, got {self.dim}")
        if not 0 < self.opacity <= 1:
            raise ManyviewError(f"opacity must be in (0, 1], got {self.opacity}")

    @classmethod
    def from_dict(cls, data: Mapping, path: str | os.PathLike | None = None) -> "ConDenseConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManyviewError(f"unknown ConDense config keys: {', '.join(unknown)}", path)
        return cls(**dict(data))

    def to_dict(self) -> dict:
        return asdict(self)


class ConDenseOutput(NamedTuple):
    features2d: Tensor  # (B, V, C, h, w) the 2D student
    anchor: Tensor  # (B, V, C_teacher, h, w) the teacher's features as decoded from the 2D student's
    features3d: Tensor  # (B, P, C) the 3D student
    rendered: Tensor  # (B, V, C, h, w) the 3D features composited into the views (not divided by alpha)
    alpha: Tensor  # (B, V, h, w) accumulated opacity


class ConDense(nn.Module, HubMixin):
    """``ConDense(config)`` (random weights), ``ConDense(config, teacher)`` (the 2D student starts from the
    pre-trained teacher) or ``ConDense.from_pretrained(folder)``."""

    config_class = ConDenseConfig

    def __init__(self, config: ConDenseConfig, teacher: Teacher | None = None):
        super().__init__()
        self.config = config
        teacher = teacher if teacher is not None else teacher_architecture(config.teacher)
        self.student2d = Student2D(teacher, config.dim, config.head_hidden, config.train_backbone)
        self.student3d = PointStudent(config.dim, config.point)
        self.anchor = nn.Conv2d(config.dim, teacher.dim, 1)

    def features2d(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) in [0, 1] -> (N, C, h, w)."""
        return self.student2d(images)

    def features3d(self, points: Tensor, colors: Tensor | None = None) -> Tensor:
        """points (P, 3) or (B, P, 3), colours alike -> (P, C) or (B, P, C)."""
        return self.student3d(points, colors)

    def render(self, points: Tensor, features: Tensor, fxfycxcy: Tensor, c2w: Tensor, image_size: tuple[int, int],
               grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """One scene's point features (P, C) into its V views (cameras of ``image_size`` images) on ``grid``."""
        with torch.no_grad():
            radii = point_radii(points.detach(), self.config.radius_k, self.config.radius_scale)
        opacity = torch.full_like(radii, self.config.opacity)
        K = grid_intrinsics(fxfycxcy, image_size, grid)
        return render_features(points, features, radii, opacity, K, c2w, *grid)

    def forward(self, images: Tensor, points: Tensor, colors: Tensor | None, fxfycxcy: Tensor,
                c2w: Tensor) -> ConDenseOutput:
        """images (B, V, 3, H, W) in [0, 1]; points (B, P, 3) and colours (B, P, 3) of each scene's surfaces;
        fxfycxcy (B, V, 4) and c2w (B, V, 4, 4) of the images."""
        B, V, _, H, W = images.shape
        f2d = self.student2d(images.flatten(0, 1))
        grid = tuple(f2d.shape[-2:])
        anchor = self.anchor(f2d)
        f3d = self.student3d(points, colors)
        rendered, alpha = zip(*(self.render(points[b], f3d[b], fxfycxcy[b], c2w[b], (H, W), grid)
                                for b in range(B)))
        return ConDenseOutput(f2d.unflatten(0, (B, V)), anchor.unflatten(0, (B, V)), f3d, torch.stack(rendered),
                              torch.stack(alpha))


__all__ = ["ConDense", "ConDenseConfig", "ConDenseOutput"]
