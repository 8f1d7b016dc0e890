"""The web viewer behind ``manyview view``: any manyview output or dataset in the browser, through viser.

``serve(path, host, port)`` starts it and returns a handle with ``url`` and ``stop()``; ``start(host, port)`` serves
an empty page at once and ``handle.show(path)`` draws the scene later (how the command serves the page while it
reads the scene); ``load_scene(path)`` says what would be drawn (cameras with thumbnails, points with
confidences, a Gaussian splat). Importing this package does not import torch.
"""

from manyview.viewer.scene_loader import ViewerScene, check_viewable, load_scene
from manyview.viewer.server import DEFAULT_HOST, DEFAULT_PORT, ViewerHandle, serve, splat_layer, start

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ViewerHandle", "ViewerScene", "check_viewable", "load_scene", "serve",
           "splat_layer", "start"]
