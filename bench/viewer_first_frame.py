"""Time to the viewer's first frame: ``manyview view`` on a small scene, opened in headless Chromium (SwiftShader).

The scene is the browser test's (tests/viewer/browser_check.py): 4 synthetic views with 48 x 48 thumbnails, 2000
green points with confidences, 300 magenta Gaussians. A frame "shows the scene" when a screenshot has at least 300
pixels of each of the points', the splat's and the frusta's colours. Two clocks, each started after the browser is
up (a user's browser is already open):

- ``serve``: from the library call ``manyview.viewer.serve(path)`` (the Python process and its imports are warm);
- ``command``: from starting ``manyview view PATH --port 0`` as a new process (Python start, torch import, loading,
  serving), the figure a user waits for; the page is opened as soon as the command prints its URL.

The page is polled with screenshots (each takes 0.1-1 s with software WebGL), so a figure can be late by one
screenshot. The machine is shared: the load average is recorded with the figures.

    python bench/viewer_first_frame.py [--repeats 3] [--screenshot first_frame.png] [--no-readme]
"""

from __future__ import annotations

import argparse
import importlib.util
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


def command_first_frame(bc, path: Path, timeout: float = 60.0) -> dict:
    """Seconds from starting ``manyview view PATH --port 0`` until its URL is printed and until a screenshot
    shows the scene."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = bc.launch(p)
        try:
            page = browser.new_page(viewport=bc.VIEWPORT)
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "manyview.cli.main", "view", str(path), "--port", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                proc.stdout.readline()  # "viewing ..."
                url = proc.stdout.readline().split()[1]
                t_url = time.perf_counter() - t0
                page.goto(url)
                _, counts = bc.wait_for(page, bc.shows_scene, timeout=timeout)
                t_frame = time.perf_counter() - t0
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            browser.close()
    return {"url_printed_s": round(t_url, 3), "first_frame_s": round(t_frame, 3), "shown": bc.shows_scene(counts)}


def markdown(result: dict) -> str:
    s, c = result["serve"], result["command"]

    def median(runs, key):
        return f"{statistics.median(r[key] for r in runs):.2f}"

    def every(runs):
        return ", ".join(f"{r['first_frame_s']:.2f}" for r in runs)

    rows = [
        "| clock | first frame, median (s) | all runs (s) | other stages, median (s) |",
        "| --- | --- | --- | --- |",
        f"| `serve()` call | {median(s, 'first_frame_s')} | {every(s)} | serve() returns {median(s, 'serve_s')}, "
        f"page loaded {median(s, 'page_load_s')} |",
        f"| `manyview view` command | {median(c, 'first_frame_s')} | {every(c)} | URL printed "
        f"{median(c, 'url_printed_s')} |",
    ]
    info = result["info"]
    return "\n".join(rows) + (f"\n\n{info['date']}, {info['cpus']} CPUs, load average {info['loadavg_start']:.1f} -> "
                              f"{info['loadavg_end']:.1f}, {info['chromium']}.")


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
    serve_runs, command_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene"
        bc.make_scene(scene)
        for i in range(args.repeats):
            serve_runs.append(bc.first_frame(scene, args.screenshot if i == 0 else None))
            print(f"serve   run {i}: {serve_runs[-1]}", flush=True)
            command_runs.append(command_first_frame(bc, scene))
            print(f"command run {i}: {command_runs[-1]}", flush=True)
    info["loadavg_end"] = os.getloadavg()[0]
    result = {"info": info, "serve": serve_runs, "command": command_runs}
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
