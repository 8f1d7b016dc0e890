"""The viewer without a browser: what it loads from each kind of path, the 3DGS -> splat-layer conversion, camera
poses in viser's convention, the confidence filter, and the server's errors (port in use, nothing viewable)."""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.io.colmap import write_colmap
from manyview.io.dataset import write_dataset
from manyview.io import write_image
from manyview.io.ply import write_ply as write_points
from manyview.io.transforms_json import write_transforms_json
from manyview.scene import Cameras, PointCloud, Views
from manyview.splat import Gaussians, write_ply as write_splat
from manyview.viewer import check_viewable, load_scene, serve, splat_layer, start
from manyview.viewer.server import check_port_free, confidence_mask, frustum_pose, vertical_fov

C0 = 0.28209479177387814  # the degree-0 SH constant


def _cameras(n: int = 3, h: int = 24, w: int = 32) -> Cameras:
    eye = torch.tensor([[3.0 * math.cos(a), 3.0 * math.sin(a), 1.0] for a in np.linspace(0, 1.5, n)])
    return Cameras.look_at(eye, torch.zeros(n, 3), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3),
                           torch.tensor([30.0, 30.0, w / 2, h / 2]).expand(n, 4), torch.tensor([h, w]).expand(n, 2))


def _views(n: int = 3) -> Views:
    cams = _cameras(n)
    g = torch.Generator().manual_seed(0)
    return Views(images=torch.rand(n, 3, 24, 32, generator=g), cameras=cams)


def _cloud(n: int = 200, confidence: bool = True) -> PointCloud:
    g = torch.Generator().manual_seed(1)
    return PointCloud(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                      torch.rand(n, generator=g) if confidence else None)


def _gaussians(n: int = 5) -> Gaussians:
    g = torch.Generator().manual_seed(2)
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) * 0.3 - 2,
                     torch.randn(n, 4, generator=g), torch.randn(n, generator=g), torch.randn(n, 1, 3, generator=g),
                     torch.zeros(n, 3, 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ conversions
def test_splat_layer_matches_hand_computed_covariances_colours_and_opacities():
    h = math.sqrt(0.5)
    g = Gaussians(
        means=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        log_scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]] * 3)),
        # 90 degrees about z, written unnormalised (x 2); 90 degrees about x; identity
        quats=torch.tensor([[2 * h, 0.0, 0.0, 2 * h], [h, h, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0, math.log(3.0), -50.0]),
        sh_dc=torch.tensor([[[0.0, 0.5 / C0, -0.25 / C0]], [[5.0, -5.0, 0.0]], [[0.0, 0.0, 0.0]]]),
        sh_rest=torch.zeros(3, 0, 3))
    layer = splat_layer(g)
    # R_z(90) maps x -> y: the variances 1, 4, 9 along x, y, z become 4, 1, 9; R_x(90) maps y -> z: 1, 9, 4.
    np.testing.assert_allclose(layer["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-6)
    np.testing.assert_allclose(layer["covariances"][1], np.diag([1.0, 9.0, 4.0]), atol=1e-6)
    np.testing.assert_allclose(layer["covariances"][2], np.diag([1.0, 4.0, 9.0]), atol=1e-6)
    np.testing.assert_allclose(layer["centers"][0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(layer["rgbs"], [[0.5, 1.0, 0.25], [1.0, 0.0, 0.5], [0.5, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(layer["opacities"], [[0.5], [0.75], [0.0]], atol=1e-6)
    assert layer["opacities"].shape == (3, 1) and layer["covariances"].dtype == np.float32


def test_splat_layer_covariances_agree_with_an_independent_rotation():
    from scipy.spatial.transform import Rotation

    g = _gaussians(20)
    layer = splat_layer(g)
    q = g.quats.double().numpy()
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy wants (x, y, z, w)
    s2 = np.exp(2 * g.log_scales.double().numpy())
    expected = np.einsum("pij,pj,pkj->pik", R, s2, R)
    np.testing.assert_allclose(layer["covariances"], expected, rtol=1e-5, atol=1e-7)


def test_frustum_pose_is_the_camera_to_world_pose_in_viser_terms():
    import viser.transforms as vtf

    cams = _cameras(4)
    for c2w in cams.c2w.double().numpy():
        wxyz, position = frustum_pose(c2w)
        np.testing.assert_allclose(vtf.SO3(wxyz).as_matrix(), c2w[:3, :3], atol=1e-6)  # float32 poses
        np.testing.assert_allclose(position, c2w[:3, 3])
        # OpenCV axes on both sides: the camera's +z (forward) points at the look-at target, the origin
        forward = vtf.SO3(wxyz).as_matrix()[:, 2]
        assert forward @ (-position / np.linalg.norm(position)) > 0.999


def test_vertical_fov_of_a_pinhole():
    assert vertical_fov(fy=50.0, height=100) == pytest.approx(math.pi / 2)
    assert vertical_fov(fy=100.0, height=100) == pytest.approx(2 * math.atan(0.5))


def test_confidence_mask_keeps_the_points_at_or_above_the_percentile():
    conf = np.arange(100, dtype=np.float32)
    assert confidence_mask(conf, 0).all()
    keep = confidence_mask(conf, 90)
    assert keep.sum() == 10 and keep[90:].all() and not keep[:90].any()


# ------------------------------------------------------------------------------------------------ loading
def test_a_reconstruction_folder_gives_cameras_thumbnails_and_points_with_confidence(tmp_path):
    views, cloud = _views(3), _cloud()
    write_dataset(tmp_path / "rec", views, points=cloud)
    scene = load_scene(tmp_path / "rec", thumbnail_size=16)
    assert scene.num_cameras == 3 and scene.gaussians is None
    torch.testing.assert_close(scene.cameras.c2w, views.cameras.c2w, atol=1e-5, rtol=0)
    assert [t.shape for t in scene.thumbnails] == [(12, 16, 3)] * 3 and scene.thumbnails[0].dtype == np.uint8
    # the thumbnail is the image, downscaled
    small = torch.nn.functional.interpolate(views.images[:1], size=(12, 16), mode="area")[0]
    assert np.abs(scene.thumbnails[0] / 255.0 - small.permute(1, 2, 0).numpy()).mean() < 0.08
    torch.testing.assert_close(scene.points.confidence, cloud.confidence)
    assert len(scene.points) == 200


def test_a_splat_run_folder_gives_the_splat_and_cameras_without_images(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    g = _gaussians(7)
    write_splat(run / "splat.ply", g)
    write_transforms_json(run / "transforms.json", _cameras(2), ["images/a.png", "images/b.png"])  # not in run/
    scene = load_scene(run)
    assert len(scene.gaussians) == 7 and scene.num_cameras == 2 and scene.points is None
    assert scene.thumbnails == [None, None]
    torch.testing.assert_close(scene.gaussians.means, g.means)


def test_single_plys_are_told_apart_by_their_properties(tmp_path):
    write_splat(tmp_path / "scene.ply", _gaussians(4))
    write_points(tmp_path / "cloud.ply", _cloud(50))
    splat = load_scene(tmp_path / "scene.ply")
    cloud = load_scene(tmp_path / "cloud.ply")
    assert len(splat.gaussians) == 4 and splat.points is None and splat.cameras is None
    assert len(cloud.points) == 50 and cloud.points.confidence is not None and cloud.gaussians is None


def test_a_colmap_dataset_and_a_transforms_json_file(tmp_path):
    cams = _cameras(3)
    names = ["a.png", "b.png", "c.png"]
    for name, image in zip(names, _views(3).images):
        write_image(tmp_path / "images" / name, image)
    write_colmap(tmp_path / "sparse" / "0", cams, names, _cloud(30, confidence=False))
    scene = load_scene(tmp_path)
    assert scene.num_cameras == 3 and len(scene.points) == 30 and all(t is not None for t in scene.thumbnails)
    write_transforms_json(tmp_path / "transforms.json", cams, [f"images/{n}" for n in names])
    from_json = load_scene(tmp_path / "transforms.json")
    assert from_json.num_cameras == 3 and all(t is not None for t in from_json.thumbnails)
    torch.testing.assert_close(from_json.cameras.c2w, scene.cameras.c2w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, message", [
    ("empty", "nothing to view: no cameras"),
    ("images", "an image folder without camera poses"),
    ("text", "nothing to view: expected a folder"),
    ("missing", "no such file or folder"),
])
def test_a_path_with_nothing_viewable_is_one_clear_error(tmp_path, kind, message):
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "images":
        write_image(path / "a.png", torch.rand(3, 8, 8))
    elif kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    with pytest.raises(ManyviewError, match=message) as info:
        serve(path, port=0)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ManyviewError, match=message):  # the command's check before it serves a page agrees
        check_viewable(path)


def test_the_names_check_passes_what_there_is_to_view(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(20))
    (tmp_path / "run").mkdir()
    write_points(tmp_path / "run" / "points.ply", _cloud(20))
    for path in (tmp_path / "cloud.ply", tmp_path / "run"):
        assert check_viewable(path) == path


def test_the_command_refuses_a_path_with_nothing_viewable_before_serving(tmp_path, capsys):
    from manyview.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "nothing to view" in err  # no URL of a page that would stay empty


# ------------------------------------------------------------------------------------------------ the server
def test_serving_defaults_to_localhost_and_stop_frees_the_port(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(20))
    handle = serve(tmp_path / "cloud.ply", port=0)
    try:
        assert handle.host == "127.0.0.1" and handle.server.get_host() == "127.0.0.1"
        assert handle.url == f"http://127.0.0.1:{handle.port}"
        with socket.create_connection(("127.0.0.1", handle.port), timeout=5):
            pass
        with pytest.raises(ManyviewError, match="already in use"):
            check_port_free("127.0.0.1", handle.port)
    finally:
        handle.stop()
    check_port_free("127.0.0.1", handle.port)  # free again


def test_the_viewer_turns_off_the_environment_map_and_lights(tmp_path, monkeypatch):
    """Nothing drawn is lit; viser's client hides its canvas until the default environment map is prefiltered
    (seconds on software WebGL), so the viewer turns both off for every page."""
    from viser import _messages
    from viser.infra import WebsockServer

    sent = []
    queue = WebsockServer.queue_message
    monkeypatch.setattr(WebsockServer, "queue_message", lambda self, m: (sent.append(m), queue(self, m))[1])
    handle = start(port=0)
    try:
        env = [m for m in sent if isinstance(m, _messages.EnvironmentMapMessage)]
        lights = [m for m in sent if isinstance(m, _messages.EnableLightsMessage)]
        assert env and env[-1].hdri_data is None
        assert lights and not lights[-1].enabled and not lights[-1].cast_shadow
    finally:
        handle.stop()


def test_start_serves_an_empty_page_and_show_draws_the_scene_once(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(20))
    handle = start(port=0)
    try:
        assert handle.scene is None and "points" not in handle.layers
        with urllib.request.urlopen(handle.url, timeout=10) as page:  # served before anything is loaded
            assert page.status == 200
        handle.show(tmp_path / "cloud.ply")
        assert len(handle.scene.points) == 20 and len(handle.layers["points"].points) == 20
        np.testing.assert_allclose(handle.server.initial_camera.look_at, np.median(_cloud(20).xyz.numpy(), 0),
                                   atol=1e-5)
        with pytest.raises(ManyviewError, match="already shows a scene"):
            handle.show(tmp_path / "cloud.ply")
    finally:
        handle.stop()


def test_the_view_command_defaults_to_localhost_and_viser_port():
    import tyro

    from manyview.cli.view import View

    view = tyro.cli(View, args=["some/path"])
    assert view.host == "127.0.0.1" and view.port == 8080


def test_a_port_in_use_is_one_clear_error_naming_it(tmp_path, capsys):
    from manyview.cli.main import main

    write_points(tmp_path / "cloud.ply", _cloud(20))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ManyviewError, match=f"127.0.0.1:{port}: already in use"):
            serve(tmp_path / "cloud.ply", port=port)
        assert main(["view", str(tmp_path / "cloud.ply"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"127.0.0.1:{port}" in err and "already in use" in err and "--port" in err


def test_a_port_taken_after_the_check_is_refused_not_silently_moved(tmp_path, monkeypatch):
    """viser takes the next free port when its own is busy; the viewer must refuse instead, and stop that server."""
    import manyview.viewer.server as server_module

    write_points(tmp_path / "cloud.ply", _cloud(20))
    monkeypatch.setattr(server_module, "check_port_free", lambda host, port: None)  # the race: checked while free
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ManyviewError, match=f"127.0.0.1:{port}: already in use"):
            serve(tmp_path / "cloud.ply", port=port)
    check_port_free("127.0.0.1", port + 1)  # the server viser started on the next port was stopped


def test_the_confidence_slider_filters_the_drawn_points(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(200))
    handle = serve(tmp_path / "cloud.ply", port=0)
    try:
        assert len(handle.layers["points"].points) == 200
        handle.controls["confidence"].value = 75.0
        kept = handle.layers["points"].points
        conf = handle.scene.points.confidence.numpy()
        assert len(kept) == int((conf >= np.percentile(conf, 75)).sum()) == 50
        np.testing.assert_allclose(np.sort(kept[:, 0]),
                                   np.sort(handle.scene.points.xyz.numpy()[conf >= np.percentile(conf, 75), 0]))
        handle.controls["confidence"].value = 0.0
        assert len(handle.layers["points"].points) == 200
    finally:
        handle.stop()


def test_no_confidence_slider_without_confidences(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(20, confidence=False))
    handle = serve(tmp_path / "cloud.ply", port=0)
    try:
        assert "confidence" not in handle.controls and "points" in handle.layers
    finally:
        handle.stop()


def test_the_command_prints_the_url_and_ctrl_c_stops_it_quietly(tmp_path):
    write_points(tmp_path / "cloud.ply", _cloud(20))
    proc = subprocess.Popen([sys.executable, "-m", "manyview.cli.main", "view", str(tmp_path / "cloud.ply"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even in a background job
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = lines[0].split()[1]  # the page is served (and its URL printed) before the scene is read
        assert url.startswith("http://127.0.0.1:") and lines[1].startswith("viewing ") and "point cloud" in lines[1]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read(2000).lower()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5):
            pass  # a connection that sends nothing must not print a traceback either
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == "" and out == ""
