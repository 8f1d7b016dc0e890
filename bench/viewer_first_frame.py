"""Time to the viewer's first frame: ``manyview view`` on a small scene, opened in headless Chromium (SwiftShader),
against a plain viser page with the same content in the same run.

The scene is the browser test's (tests/viewer/browser_check.py): 4 synthetic views with 48 x 48 thumbnails, 2000
green points with confidences, 300 magenta Gaussians. A frame "shows the scene" when the page's canvas, fully
opaque, has at least 300 pixels of each of the points', the splat's and the frusta's colours: found inside the page
every 50 ms (``browser_check.wait_first_frame``), then confirmed by a screenshot (the screenshot's time is
recorded too; polling with screenshots alone is late by up to one screenshot, 0.1-5 s on software WebGL). Three
clocks, each started after the browser is up (a user's browser is already open), interleaved run by run:

- ``plain viser``: the baseline, a ``viser.ViserServer`` with viser's defaults drawing the same points, Gaussians and
  frusta with their thumbnails from the same initial camera (data already in memory, no controls);
- ``serve``: from the library call ``manyview.viewer.serve(path)`` (the Python process and its imports are warm);
- ``command``: from starting ``manyview view PATH --port 0`` as a new process (Python start, imports, serving,
  loading), the figure a user waits for; the page is opened as soon as the command prints its URL.

The machine is shared: the load average is recorded with the figures.

    python bench/viewer_first_frame.py [--repeats 3] [--screenshot first_frame.png] [--no-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from manyview.io.atomic import atomic_open

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "viewer_first_frame.json"


def _browser_check():
    spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tests" / "viewer" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_viser_first_frame(bc, path: Path, timeout: float = 60.0) -> dict:
    """The baseline: viser's defaults (environment map, lights), no controls, the same points, Gaussians, frusta and
    thumbnails, framed by the same initial camera; timed from creating the server, the data already in memory."""
    import numpy as np
    import viser

    from manyview.viewer import load_scene
    from manyview.viewer import server as mv

    scene = load_scene(path)
    up = mv.scene_up(scene)
    centre, radius = mv.scene_centre_and_radius(scene)
    layer = mv.splat_layer(scene.gaussians)
    xyz = scene.points.xyz.float().numpy()
    rgb = (scene.points.rgb.float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    c2w = scene.cameras.c2w.double().numpy()
    sizes, fy = scene.cameras.image_size.tolist(), scene.cameras.fy.double().numpy()
    scale = 0.1 * float(np.median(np.linalg.norm(c2w[:, :3, 3] - centre, axis=1)))

    def start():
        with contextlib.redirect_stdout(io.StringIO()):
            server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
        server.scene.set_up_direction(tuple(up))
        mv._initial_camera(server, scene, up, centre, radius)
        server.scene.add_gaussian_splats("/splat", **layer)
        server.scene.add_point_cloud("/points", xyz, rgb, point_size=0.01 * radius, precision="float32")
        for i in range(len(c2w)):
            h, w = sizes[i]
            wxyz, position = mv.frustum_pose(c2w[i])
            server.scene.add_camera_frustum(f"/cameras/{i:05d}", fov=mv.vertical_fov(float(fy[i]), h), aspect=w / h,
                                            scale=scale, color=mv.FRUSTUM_COLOR, image=scene.thumbnails[i],
                                            format="jpeg", wxyz=wxyz, position=position)
        return server

    def stop(server):
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()

    return bc.time_page(start, lambda s: f"http://127.0.0.1:{s.get_port()}", stop, timeout=timeout)


def command_first_frame(bc, path: Path, timeout: float = 60.0) -> dict:
    """Seconds from starting ``manyview view PATH --port 0`` until its URL is printed, until it says what it shows
    (``viewing ...``: the scene is drawn) and until the page shows the scene."""
    import queue
    import threading

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = bc.launch(p)
        try:
            page = browser.new_page(viewport=bc.VIEWPORT)
            t0 = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "manyview.cli.main", "view", str(path), "--port", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            lines: queue.Queue = queue.Queue()  # (seconds since start, line), read as the command prints them

            def read() -> None:
                for line in proc.stdout:
                    lines.put((time.time() - t0, line))

            threading.Thread(target=read, daemon=True).start()
            try:
                seen: list[tuple[float, str]] = []
                while not any("http://" in line for _, line in seen):
                    try:
                        seen.append(lines.get(timeout=timeout))
                    except queue.Empty:
                        raise SystemExit("manyview view printed no URL") from None
                t_url, line = next((t, line) for t, line in seen if "http://" in line)
                page.goto(next(w for w in line.split() if w.startswith("http://")))
                at = bc.wait_first_frame(page, timeout)
                _, counts = bc.look(page)
                t_shot = time.time() - t0
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            browser.close()
    while not lines.empty():
        seen.append(lines.get())
    t_drawn = next((t for t, line in seen if line.startswith("viewing")), None)
    return {"url_printed_s": round(t_url, 3), "drawn_s": None if t_drawn is None else round(t_drawn, 3),
            "first_frame_s": None if at is None else round(at - t0, 3), "screenshot_s": round(t_shot, 3),
            "shown": bc.shows_scene(counts)}


def markdown(result: dict) -> str:
    b, s, c = result["plain_viser"], result["serve"], result["command"]

    def median(runs, key):
        values = [r[key] for r in runs if r[key] is not None]
        return f"{statistics.median(values):.2f}" if values else "-"

    def every(runs):
        return ", ".join("-" if r["first_frame_s"] is None else f"{r['first_frame_s']:.2f}" for r in runs)

    rows = [
        "| clock | first frame, median (s) | all runs (s) | other stages, median (s) |",
        "| --- | --- | --- | --- |",
        f"| plain viser page, same content (baseline) | {median(b, 'first_frame_s')} | {every(b)} | server up "
        f"{median(b, 'started_s')}, page loaded {median(b, 'page_load_s')}, screenshot confirms "
        f"{median(b, 'screenshot_s')} |",
        f"| `serve()` call | {median(s, 'first_frame_s')} | {every(s)} | serve() returns {median(s, 'serve_s')}, "
        f"page loaded {median(s, 'page_load_s')}, screenshot confirms {median(s, 'screenshot_s')} |",
        f"| `manyview view` command | {median(c, 'first_frame_s')} | {every(c)} | URL printed "
        f"{median(c, 'url_printed_s')}, scene drawn {median(c, 'drawn_s')}, screenshot confirms "
        f"{median(c, 'screenshot_s')} |",
    ]
    info = result["info"]
    shown = all(r["shown"] for r in b + s + c)
    return "\n".join(rows) + (f"\n\n{info['date']}, {info['cpus']} CPUs, load average {info['loadavg_start']:.1f} -> "
                              f"{info['loadavg_end']:.1f}, {info['chromium']}; every confirming screenshot shows "
                              f"the scene: {'yes' if shown else 'NO'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, default=None, help="save the first run's first frame here")
    parser.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    args = parser.parse_args()
    bc = _browser_check()
    reason = bc.browser_missing_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    chromium = subprocess.run([str(bc.CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip()
    info = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "platform": platform.platform(),
            "chromium": chromium, "loadavg_start": os.getloadavg()[0]}
    plain_runs, serve_runs, command_runs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene"
        bc.make_scene(scene)
        for i in range(args.repeats):
            plain_runs.append(plain_viser_first_frame(bc, scene))
            print(f"plain   run {i}: {plain_runs[-1]}", flush=True)
            serve_runs.append(bc.first_frame(scene, args.screenshot if i == 0 else None))
            print(f"serve   run {i}: {serve_runs[-1]}", flush=True)
            command_runs.append(command_first_frame(bc, scene))
            print(f"command run {i}: {command_runs[-1]}", flush=True)
    info["loadavg_end"] = os.getloadavg()[0]
    result = {"info": info, "plain_viser": plain_runs, "serve": serve_runs, "command": command_runs}
    md = markdown(result)
    print("\n" + md)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(OUT, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    print(f"\nwrote {OUT}")
    if not args.no_readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_table import write_table

        heading = "Viewer first frame (`bench/viewer_first_frame.py`)"
        print(f"updated {write_table('viewer_first_frame', md, heading=heading)}")


if __name__ == "__main__":
    main()
