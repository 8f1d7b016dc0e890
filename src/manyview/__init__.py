"""manyview: multi-view 3D vision on one spine.

The data model lives in :mod:`manyview.scene`; everything else speaks it.
"""

from manyview.errors import ManyviewError
from manyview.scene import Cameras, PointCloud, Reconstruction, Views

__version__ = "0.1.0"

__all__ = ["Cameras", "ManyviewError", "PointCloud", "Reconstruction", "Views", "__version__"]
