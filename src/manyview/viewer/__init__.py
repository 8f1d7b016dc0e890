"""The web viewer behind ``manyview view``: any manyview output or dataset in the browser, through viser.

``serve(path, host, port)`` starts it and returns a handle with ``url`` and ``stop()``; ``load_scene(path)`` says
what would be drawn (cameras with thumbnails, points with confidences, a Gaussian splat).
"""

from manyview.viewer.scene_loader import ViewerScene, load_scene
from manyview.viewer.server import DEFAULT_HOST, DEFAULT_PORT, ViewerHandle, serve, splat_layer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ViewerHandle", "ViewerScene", "load_scene", "serve", "splat_layer"]
