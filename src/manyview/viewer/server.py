"""The web viewer: a viser server that draws a :class:`ViewerScene` (frusta with thumbnails, points, Gaussians).

Only viser's bundled client is served (it works offline); nothing here asks for a share URL or any other
internet service. The server listens on 127.0.0.1 unless the caller names another host.

Importing this module does not import torch: ``start()`` serves the page before anything is loaded, so that a
browser loads viser's client while the scene is read (``ViewerHandle.show``); ``serve()`` does both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass

import numpy as np

from manyview.errors import ManyviewError
from manyview.viewer.scene_loader import ViewerScene, load_scene

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # viser's default
FRUSTUM_COLOR = (255, 80, 0)  # orange: stands out against the light background and most scenes


# ------------------------------------------------------------------------------------------------ conversions
def splat_layer(gaussians) -> dict[str, np.ndarray]:
    """3DGS parameters -> what viser's splat layer takes: centres (P, 3), covariances (P, 3, 3) = R diag(s^2) R^T
    from the (w, x, y, z) quaternion and exp(log-scales), RGB (P, 3) from the SH DC term (0.5 + C0 * dc, clipped
    to [0, 1]; viser draws no view-dependent colour), opacities (P, 1) = sigmoid(logit)."""
    import torch

    g = gaussians.detach().to("cpu", torch.float64)
    return {
        "centers": g.means.numpy().astype(np.float32),
        "covariances": g.covariances().numpy().astype(np.float32),
        "rgbs": g.colors.clamp(0.0, 1.0).numpy().astype(np.float32),
        "opacities": g.opacities[:, None].numpy().astype(np.float32),
    }


def frustum_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of a camera-to-world pose. viser's frusta and client cameras use OpenCV axes too
    (x right, y down, z forward), so the rotation goes over unchanged."""
    import torch

    from manyview.geometry.rotation import matrix_to_quaternion

    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    return matrix_to_quaternion(c2w[:3, :3]).numpy(), c2w[:3, 3].numpy()


def vertical_fov(fy: float, height: float) -> float:
    """The vertical field of view (radians) of a pinhole camera, as viser's frustum and client camera take it."""
    return 2.0 * math.atan(0.5 * height / fy)


def confidence_mask(confidence: np.ndarray, percentile: float) -> np.ndarray:
    """The points whose confidence is at least the ``percentile``-th percentile (0 keeps all)."""
    if percentile <= 0:
        return np.ones(len(confidence), dtype=bool)
    return confidence >= np.percentile(confidence, percentile)


def scene_up(scene: ViewerScene) -> np.ndarray:
    """World up: against the cameras' mean down axis (OpenCV y points down in the image), +z without cameras."""
    if scene.cameras is not None:
        down = scene.cameras.c2w[:, :3, 1].double().mean(0).numpy()
        if np.linalg.norm(down) > 0.3:  # cameras that mostly agree on which way is down
            return -down / np.linalg.norm(down)
    return np.array([0.0, 0.0, 1.0])


def scene_centre_and_radius(scene: ViewerScene) -> tuple[np.ndarray, float]:
    """A robust centre and size of what is drawn: the median of the points / opaque Gaussians / camera targets,
    and the 90th percentile of the distances to it."""
    parts = []
    if scene.points is not None:
        parts.append(scene.points.xyz.double().numpy())
    if scene.gaussians is not None:
        g = scene.gaussians
        opaque = g.opacities.detach() > 0.5
        parts.append(g.means.detach().double()[opaque if bool(opaque.sum() >= 3) else slice(None)].numpy())
    if parts:
        xyz = np.concatenate(parts)
    else:
        centres = scene.cameras.centers.double().numpy()
        xyz = np.concatenate([centres, [_axes_meeting_point(scene)]])
    centre = np.median(xyz, axis=0)
    radius = float(np.percentile(np.linalg.norm(xyz - centre, axis=1), 90)) if len(xyz) > 1 else 1.0
    return centre, radius if radius > 1e-9 else 1.0


def _axes_meeting_point(scene: ViewerScene) -> np.ndarray:
    """The point closest (least squares) to every camera's optical axis; in front of the mean camera when the
    axes are near parallel (a forward-facing capture)."""
    c2w = scene.cameras.c2w.double().numpy()
    centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, forward):
        m = np.eye(3) - np.outer(d, d)
        a += m
        b += m @ c
    if len(c2w) > 1 and np.linalg.cond(a) < 1e6:
        point = np.linalg.solve(a, b)
        if np.mean(np.einsum("ij,ij->i", point - centres, forward)) > 0:  # in front of the cameras
            return point
    spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) if len(c2w) > 1 else 0.0
    return centres.mean(0) + forward.mean(0) * max(spread, 1.0)


# ------------------------------------------------------------------------------------------------ the server
def check_port_free(host: str, port: int) -> None:
    """One clear error when (host, port) cannot be listened on; viser itself would silently take the next port."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "already in use" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
            raise ManyviewError(f"cannot listen on {host}:{port}: {reason}; pick another with --port") from None


@dataclass
class ViewerHandle:
    """A running viewer. ``show()`` draws a scene (once); ``stop()`` shuts it down; ``wait()`` blocks until it is
    stopped."""

    server: object  # viser.ViserServer
    scene: ViewerScene | None  # None until show()
    host: str
    port: int
    controls: dict  # panel controls by name: splat, points, point_size, confidence, cameras (viser GUI handles)
    layers: dict  # what is drawn: splat, points (viser scene handles; points is replaced when a control changes)
    frusta: list  # viser CameraFrustumHandle per camera
    _stopped: threading.Event

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def show(self, path: str | os.PathLike | ViewerScene, thumbnail_size: int = 256,
             max_points: int = 1_000_000) -> ViewerScene:
        """Read ``path`` (anything :func:`load_scene` reads) and draw it. Pages already open receive the whole
        scene, its up direction and its initial camera in one batch, and their camera moves there as a new page's
        does."""
        if self.scene is not None:
            raise ManyviewError("this viewer already shows a scene")
        scene = path if isinstance(path, ViewerScene) else load_scene(path, thumbnail_size, max_points)
        self.scene = scene
        with self.server.atomic():
            _populate(self)
        self.server.flush()
        return scene

    def jump_to_camera(self, client, index: int) -> None:
        """Move ``client``'s view onto camera ``index`` (what a click on its frustum does)."""
        _jump(client, self.scene, index)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        # viser prints "Server stopped" from its server thread; a viewer that the user stops says nothing.
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()
        self._stopped.set()

    def wait(self) -> None:
        while not self._stopped.wait(0.5):
            pass


def serve(path: str | os.PathLike | ViewerScene, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          thumbnail_size: int = 256, max_points: int = 1_000_000) -> ViewerHandle:
    """Start a viewer for ``path`` (anything :func:`load_scene` reads) and return once it is drawn; the server
    runs in background threads until ``handle.stop()``. ``port=0`` takes any free port (``handle.port`` says
    which)."""
    handle = start(host, port)
    try:
        handle.show(path, thumbnail_size, max_points)
    except BaseException:
        handle.stop()
        raise
    return handle


def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ViewerHandle:
    """Serve an empty viewer on (host, port) and return at once; ``handle.show(path)`` draws the scene. The page
    is served from the start, so a browser opened at ``handle.url`` loads viser's client while the scene is read."""
    if not 0 <= port <= 65535:
        raise ManyviewError(f"--port must be in 0..65535, got {port}")
    check_port_free(host, port)
    import viser

    # A connection that closes before its HTTP request (a port probe, a browser's preconnect) makes websockets log
    # a traceback through logging's last-resort handler; it is not the user's concern. Applications that configure
    # logging still receive these records through propagation.
    quiet = logging.getLogger("websockets")
    if not any(isinstance(h, logging.NullHandler) for h in quiet.handlers):
        quiet.addHandler(logging.NullHandler())
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own banner even when not verbose
            server = viser.ViserServer(host=host, port=port, verbose=False)
    except OSError as e:
        raise ManyviewError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    handle = ViewerHandle(server, None, host, server.get_port(), {}, {}, [], threading.Event())
    try:
        if port != 0 and handle.port != port:  # another process took the port after the check; viser moved on
            raise ManyviewError(f"cannot listen on {host}:{port}: already in use; pick another with --port")
        server.gui.configure_theme(show_share_button=False)  # the share URL needs the internet
        _unlit(server)
    except BaseException:
        handle.stop()
        raise
    return handle


def _unlit(server) -> None:
    """No environment map and no default lights: nothing the viewer draws is lit (points, splats, frustum lines
    and photos use unlit materials), and viser's client keeps its canvas at 5 % opacity until the environment
    map's HDR image has been decoded and prefiltered, then fades it in: 1-3 s before the first visible frame on
    software WebGL (bench/viewer_first_frame.py)."""
    server.scene.configure_environment_map(hdri=None)
    server.scene.configure_default_lights(enabled=False, cast_shadow=False)


def _populate(handle: ViewerHandle) -> None:
    server, scene = handle.server, handle.scene
    up = scene_up(scene)
    centre, radius = scene_centre_and_radius(scene)
    server.scene.set_up_direction(tuple(up))
    _initial_camera(server, scene, up, centre, radius)
    server.gui.add_markdown(_info_text(scene))

    if scene.gaussians is not None:
        layer = splat_layer(scene.gaussians)
        splats = handle.layers["splat"] = server.scene.add_gaussian_splats("/splat", **layer)
        box = handle.controls["splat"] = server.gui.add_checkbox("Gaussian splat", True)
        box.on_update(lambda _: setattr(splats, "visible", box.value))

    if scene.points is not None:
        _add_points(handle, radius)

    if scene.cameras is not None:
        _add_frusta(handle, centre, radius)


def _info_text(scene: ViewerScene) -> str:
    lines = [f"**{scene.source.name or scene.source}**", ""]
    lines += [f"- {what}" for what in scene.found]
    counts = []
    if scene.cameras is not None:
        counts.append(f"{len(scene.cameras)} cameras (click one to look through it; untick Cameras to see past its "
                      "photo)")
    if scene.points is not None:
        counts.append(f"{len(scene.points)} points")
    if scene.gaussians is not None:
        counts.append(f"{len(scene.gaussians)} Gaussians")
    return "\n".join(lines + ["", ", ".join(counts)])


def _initial_camera(server, scene: ViewerScene, up: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Start outside what is drawn, looking at its centre: near the first camera but turned 25 degrees about the
    up axis and raised 25 degrees (so its frustum does not block the view); from above one side without cameras."""
    elevation, azimuth, distance = math.radians(35), 0.0, 2.5 * radius
    side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    if scene.cameras is not None:
        eye = scene.cameras.centers[0].double().numpy() - centre
        flat = eye - np.dot(eye, up) * up
        if np.linalg.norm(flat) > 1e-6 * np.linalg.norm(eye):
            side = flat
            elevation = min(math.asin(float(np.clip(np.dot(eye, up) / np.linalg.norm(eye), -1, 1)))
                            + math.radians(25), math.radians(75))
            azimuth = math.radians(25)
        distance = max(1.8 * float(np.linalg.norm(eye)), distance)
    side = side / np.linalg.norm(side)
    across = np.cross(up, side)
    horizontal = math.cos(azimuth) * side + math.sin(azimuth) * across
    offset = distance * (math.cos(elevation) * horizontal + math.sin(elevation) * up)
    server.initial_camera.look_at = tuple(centre)
    server.initial_camera.position = tuple(centre + offset)
    server.initial_camera.up = tuple(up)
    server.initial_camera.near = max(1e-4, 0.002 * radius)
    server.initial_camera.far = max(1000.0, 100.0 * radius)


def _add_points(handle: ViewerHandle, radius: float) -> None:
    server, cloud = handle.server, handle.scene.points
    xyz = cloud.xyz.float().numpy()
    rgb = ((cloud.rgb.float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8) if cloud.rgb is not None
           else np.full((len(xyz), 3), 128, dtype=np.uint8))
    state = {"size": 0.01 * radius, "percentile": 0.0}

    def draw() -> None:
        keep = (confidence_mask(cloud.confidence.float().numpy(), state["percentile"])
                if cloud.confidence is not None else slice(None))
        handle.layers["points"] = server.scene.add_point_cloud(
            "/points", xyz[keep], rgb[keep], point_size=state["size"], precision="float32", visible=shown.value)

    shown = server.gui.add_checkbox("Points", True)
    size = server.gui.add_slider("Point size", min=0.0005 * radius, max=0.05 * radius, step=0.0005 * radius,
                                 initial_value=state["size"])
    handle.controls.update(points=shown, point_size=size)

    @size.on_update
    def _(_) -> None:
        state["size"] = size.value
        draw()

    @shown.on_update
    def _(_) -> None:
        draw()

    if cloud.confidence is not None:
        conf = server.gui.add_slider("Min confidence (percentile)", min=0.0, max=99.0, step=1.0, initial_value=0.0)
        handle.controls["confidence"] = conf

        @conf.on_update
        def _(_) -> None:
            state["percentile"] = conf.value
            draw()

    draw()


def _add_frusta(handle: ViewerHandle, centre: np.ndarray, radius: float) -> None:
    server, scene = handle.server, handle.scene
    cams = scene.cameras
    c2w = cams.c2w.double().numpy()
    distances = np.linalg.norm(c2w[:, :3, 3] - centre, axis=1)
    # Frusta a tenth of the typical camera-to-scene distance, so they neither vanish nor hide the scene.
    scale = 0.1 * float(np.median(distances)) if float(np.median(distances)) > 1e-9 else 0.1 * radius
    sizes = cams.image_size.tolist()
    fy = cams.fy.double().numpy()
    shown = server.gui.add_checkbox("Cameras", True)
    handle.controls["cameras"] = shown
    for i in range(len(cams)):
        h, w = sizes[i]
        wxyz, position = frustum_pose(c2w[i])
        thumb = scene.thumbnails[i] if i < len(scene.thumbnails) else None
        frustum = server.scene.add_camera_frustum(
            f"/cameras/{i:05d}", fov=vertical_fov(float(fy[i]), h), aspect=w / h, scale=scale,
            thickness=0.04 * scale, color=FRUSTUM_COLOR, image=thumb, format="jpeg", jpeg_quality=85,
            wxyz=wxyz, position=position)
        frustum.on_click(lambda event, i=i: _jump(event.client, scene, i))
        handle.frusta.append(frustum)

    @shown.on_update
    def _(_) -> None:
        for f in handle.frusta:
            f.visible = shown.value


def _jump(client, scene: ViewerScene, index: int) -> None:
    """Put ``client``'s camera where camera ``index`` stood, looking where it looked, with its field of view."""
    if client is None:
        return
    cams = scene.cameras
    wxyz, position = frustum_pose(cams.c2w[index].double().numpy())
    h = int(cams.image_size[index, 0])
    with client.atomic():
        client.camera.wxyz = wxyz
        client.camera.position = position
        client.camera.fov = vertical_fov(float(cams.fy[index]), h)
