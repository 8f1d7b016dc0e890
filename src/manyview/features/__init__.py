"""Dense 2D and 3D features made consistent by volume rendering (ConDense, reference/condense.md).

- :mod:`~manyview.features.teachers`: pre-trained 2D teachers behind one interface (EfficientNet-Lite0 from pip, the
  default; the bundled Fast3R encoder; DINOv2 and CLIP from their released checkpoints);
- :mod:`~manyview.features.student2d` / :mod:`~manyview.features.student3d`: the students (a teacher backbone with a
  light head; a k-nearest-neighbour attention point backbone), feature dimension set at run time;
- :mod:`~manyview.features.render`: per-point features composited into camera views along their rays, with a
  per-ray reference;
- :mod:`~manyview.features.condense`: the two students joined for training (rendered 3D vs 2D, and the 2D student
  anchored to its teacher);
- :mod:`~manyview.features.keypoints`: sparse features, at most K salient 3D key points with descriptors (3D NMS)
  and their 2D counterpart detected in one image;
- :mod:`~manyview.features.lift`: 2D features lifted onto the points that the views see (the baseline 3D features);
- :mod:`~manyview.features.export`: a scene's dense and sparse features, computed and written (``manyview
  features``).

Multi-view consistency is measured by :mod:`manyview.metrics.correspondence`.
"""

from manyview.features.render import grid_intrinsics, point_radii, render_features, render_features_reference
from manyview.features.student2d import Student2D
from manyview.features.student3d import PointBackboneConfig, PointStudent
from manyview.features.teachers import DEFAULT_TEACHER, TEACHERS, Teacher, load_teacher

__all__ = ["DEFAULT_TEACHER", "PointBackboneConfig", "PointStudent", "Student2D", "TEACHERS", "Teacher",
           "grid_intrinsics", "load_teacher", "point_radii", "render_features", "render_features_reference"]
