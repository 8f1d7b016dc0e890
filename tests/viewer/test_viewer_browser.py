"""The viewer in a real browser: headless Chromium (Debian's package) opens ``manyview view``'s page, WebGL on
SwiftShader, and the screenshots must show the scene.

One test runs the steps in order on one server and one page (a browser start and a page load cost seconds on two
cores, and xdist would split separate tests across workers). The scene (tests/viewer/browser_check.py) has green
points with confidences, magenta Gaussians and orange frusta, so each layer is found by its colour.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import numpy as np
import pytest

import browser_check as bc

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bc.browser_missing_reason() is not None, reason=bc.browser_missing_reason() or "")]


def _client(handle, timeout: float = 10.0):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        clients = list(handle.server.get_clients().values())
        if clients:
            return clients[0]
        time.sleep(0.05)
    raise AssertionError("the page never connected to the viewer")


def _wait_camera_at(client, position: np.ndarray, timeout: float = 10.0) -> bool:
    """Until the browser reports its camera at ``position`` (it echoes every camera change back)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if np.allclose(client.camera.position, position, atol=1e-3):
            return True
        time.sleep(0.05)
    return False


def test_viewer_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from manyview.viewer import start
    from manyview.viewer.server import frustum_pose

    truth = bc.make_scene(tmp_path / "scene")
    urls: list[str] = []
    with sync_playwright() as p:
        browser = bc.launch(p)
        try:
            page = browser.new_page(viewport=bc.VIEWPORT)
            page.on("request", lambda request: urls.append(request.url))
            page.on("websocket", lambda ws: urls.append(ws.url))

            # 1. As `manyview view` does: the page is served and opened first, the scene drawn after it connected;
            #    the first frame shows the points, the splat and the frusta, from the viewer's initial camera.
            t0 = time.time()
            handle = start(port=0)
            try:
                assert handle.host == "127.0.0.1"
                page.goto(handle.url)
                client = _client(handle)
                handle.show(tmp_path / "scene")
                at = bc.wait_first_frame(page, timeout=30)  # found in the page; the screenshot must agree
                first, counts = bc.wait_for(page, bc.shows_scene, timeout=10)
                print(f"\nviewer: first frame {None if at is None else round(at - t0, 2)} s after start(); "
                      f"pixels {counts}")
                assert at is not None, "the page's canvas never showed points, splat and frusta, fully opaque"
                (tmp_path / "first_frame.png").write_bytes(first)
                assert bc.shows_scene(counts), f"the page does not show points, splat and frusta: {counts}"
                assert _wait_camera_at(client, handle.server.initial_camera.position), \
                    f"a page open before the scene was drawn keeps its camera at {client.camera.position}"

                # 2. Each layer is what draws its colour: hiding layers from the panel removes their colours and
                #    only theirs (cameras + points first, then the splat alone).
                before = bc.look(page)[1]
                for hide in (("cameras", "points"), ("splat",)):
                    for control in ("cameras", "points", "splat"):
                        handle.controls[control].value = control not in hide
                    gone = [{"cameras": "frusta"}.get(c, c) for c in hide]
                    kept = [k for k in before if k not in gone]

                    def hidden(c, gone=gone, kept=kept):
                        return all(c[k] < 0.1 * before[k] for k in gone) and all(c[k] > 0.5 * before[k] for k in kept)

                    _, counts = bc.wait_for(page, hidden, timeout=10)
                    assert hidden(counts), f"hiding {hide}: pixels {before} -> {counts}"
                for control in ("cameras", "points", "splat"):
                    handle.controls[control].value = True
                _, counts = bc.wait_for(page, lambda c: all(c[k] > 0.5 * before[k] for k in before), timeout=10)
                assert all(counts[k] > 0.5 * before[k] for k in before), f"showing all again: {before} -> {counts}"

                # 3. The confidence slider, moved with the keyboard in the page, drops the low-confidence points
                #    (confidences are uniform in [0, 1]: the 99th percentile keeps 1 % of them).
                before = bc.look(page)[1]["points"]
                slider = page.locator("xpath=//*[contains(text(), 'Min confidence')]"
                                      "/ancestor::*[.//*[@role='slider']][1]//*[@role='slider']")
                slider.focus()
                page.keyboard.press("End")
                _, after = bc.wait_for(page, lambda c: c["points"] < 0.2 * before, timeout=10)
                assert handle.controls["confidence"].value == 99.0
                assert after["points"] < 0.2 * before, f"points {before} -> {after['points']} at the 99th percentile"
                page.keyboard.press("Home")
                bc.wait_for(page, lambda c: c["points"] > 0.5 * before, timeout=10)

                # 4. Moving the camera from the server (as the frustum click does) changes the picture.
                still = page.screenshot()
                handle.jump_to_camera(client, 1)
                centre1 = truth["cameras"].centers[1].double().numpy()
                assert _wait_camera_at(client, centre1), f"camera at {client.camera.position}, not {centre1}"
                moved, _ = bc.wait_for(page, lambda c: False, timeout=0.5)  # one more frame at the new view
                assert bc.picture_difference(still, moved) > 0.05

                # 5. A real click on a frustum jumps there: stand behind camera 2, click the middle of the canvas.
                c2w = truth["cameras"].c2w[2].double().numpy()
                wxyz, centre2 = frustum_pose(c2w)
                behind = centre2 - c2w[:3, 2] * 3 * handle.frusta[2].scale
                with client.atomic():
                    client.camera.wxyz = wxyz
                    client.camera.position = behind
                assert _wait_camera_at(client, behind)
                time.sleep(0.5)  # let the page draw the new view before clicking into it
                box = page.locator("canvas").first.bounding_box()
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                assert _wait_camera_at(client, centre2), f"after the click the camera is at " \
                                                         f"{client.camera.position}, not camera 2's {centre2}"
            finally:
                handle.stop()
        finally:
            browser.close()

    # 6. Nothing left this machine: every request went to the viewer itself.
    assert urls, "no requests recorded"
    outside = [u for u in urls if urlparse(u).scheme not in ("data", "blob")
               and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    assert not outside, f"requests left localhost: {outside[:5]}"
