"""manyview: multi-view 3D vision on one spine.

The data model lives in :mod:`manyview.scene`; everything else speaks it.
"""

from manyview.errors import ManyviewError

__version__ = "0.1.0"

__all__ = ["Cameras", "ManyviewError", "PointCloud", "Reconstruction", "Views", "__version__"]

_SCENE_TYPES = {"Cameras", "PointCloud", "Reconstruction", "Views"}


def __getattr__(name: str):
    # The scene types import torch (2-3 s on two busy cores): only when first used, so that a command that does not
    # need them at once (``manyview view`` serves its page first) starts without it.
    if name in _SCENE_TYPES:
        import manyview.scene

        return getattr(manyview.scene, name)
    raise AttributeError(f"module 'manyview' has no attribute {name!r}")
