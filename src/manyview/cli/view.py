"""``manyview view``: any manyview output or dataset in the browser (viser), until Ctrl-C."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from manyview.viewer.server import DEFAULT_HOST, DEFAULT_PORT


@dataclass
class View:
    """Serve a web viewer for PATH: a reconstruction or dataset folder (COLMAP sparse/0, transforms.json,
    points.ply), a splat run (splat.ply + transforms.json), a transforms.json, or a single PLY (3DGS splat or point
    cloud). Shows the camera frusta with their images (click one to look through it), the point cloud (with a
    confidence slider when it has confidences) and the Gaussian splat. Works offline; stop it with Ctrl-C.
    """

    path: tyro.conf.Positional[Path]
    """Folder or file to view."""
    port: int = DEFAULT_PORT
    """Port to listen on (0: any free port)."""
    host: str = DEFAULT_HOST
    """Address to listen on. The default serves this machine only; 0.0.0.0 serves every network it is on."""

    def run(self) -> None:
        from manyview.viewer import check_viewable, start

        check_viewable(self.path)  # the plain bad-input errors before a page is served
        # The page is served before the scene is read: a browser opened now loads viser's client (seconds with
        # software WebGL) while the scene loads, and receives the scene as soon as it is drawn.
        handle = start(self.host, self.port)
        try:
            print(f"open {handle.url} in a browser; Ctrl-C stops the viewer", flush=True)
            if self.host in ("0.0.0.0", "::"):
                print("note: listening on every network interface; anyone who can reach this machine can view it",
                      flush=True)
            scene = handle.show(self.path)
            print(f"viewing {self.path} ({', '.join(scene.found)})", flush=True)
            handle.wait()
        except KeyboardInterrupt:
            pass  # the way to stop a viewer: exit 0, quietly
        finally:
            handle.stop()
