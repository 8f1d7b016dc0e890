"""Helpers for checking the viewer in a real browser: a scene with known colours, headless Chromium, pixel counts.

Shared by tests/viewer/test_viewer_browser.py and bench/viewer_first_frame.py. Chromium is Debian's package
(/usr/bin/chromium), driven by playwright without its own browser download. WebGL runs on SwiftShader (software).
"""

from __future__ import annotations

import importlib.util
import io
import math
import time
from pathlib import Path

import numpy as np
import torch

CHROMIUM = Path("/usr/bin/chromium")
# The machines these run on refuse Chromium's background connections; keep it from trying, and let WebGL run on
# SwiftShader (no GPU, and newer Chromium only enables the software path when asked to).
LAUNCH_ARGS = [
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--no-default-browser-check", "--disable-default-apps", "--disable-domain-reliability", "--no-sandbox",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
]
VIEWPORT = {"width": 800, "height": 600}

# The scene's known colours (RGB in [0, 1]) and the pixel tests that find them on a light background.
POINT_RGB = (0.0, 1.0, 0.0)  # green points
SPLAT_RGB = (1.0, 0.0, 1.0)  # magenta Gaussians


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)


def make_scene(folder: Path) -> dict:
    """A manyview dataset at ``folder`` (4 synthetic views, 48 x 48) with a green point cloud carrying
    confidences (uniform in [0, 1]) beside the object and a magenta Gaussian splat on the other side."""
    from manyview import synth
    from manyview.io.dataset import write_dataset
    from manyview.scene import PointCloud
    from manyview.splat import Gaussians, write_ply
    from manyview.splat.sh import rgb_to_sh

    _, views = synth.generate(seed=3, kind="object", num_views=4, height=48, width=48)
    g = torch.Generator().manual_seed(0)
    n = 2000
    xyz = torch.randn(n, 3, generator=g) * 0.25 + torch.tensor([0.4, 0.0, 0.0])
    confidence = torch.rand(n, generator=g)
    write_dataset(folder, views, points=PointCloud(xyz, torch.tensor(POINT_RGB).expand(n, 3).clone(), confidence))
    m = 300
    gaussians = Gaussians(
        means=torch.randn(m, 3, generator=g) * 0.2 + torch.tensor([-0.4, 0.0, 0.0]),
        log_scales=torch.full((m, 3), math.log(0.05)), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(m, 1),
        opacity_logits=torch.full((m,), 4.0), sh_dc=rgb_to_sh(torch.tensor(SPLAT_RGB)).repeat(m, 1, 1),
        sh_rest=torch.zeros(m, 0, 3))
    write_ply(folder / "splat.ply", gaussians)
    return {"cameras": views.cameras, "points": n, "gaussians": m}


def colour_counts(png: bytes, hide: list[list[float]] = ()) -> dict[str, int]:
    """Pixels of each known colour in a screenshot: 'points' (green), 'splat' (magenta), 'frusta' (orange);
    pixels inside the ``hide`` boxes ([x, y, w, h]: the page's notices, whose orange bar looks like a frustum)
    are not counted."""
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    keep = np.ones(im.shape[:2], dtype=bool)
    for x, y, w, h in hide:
        keep[max(0, int(y)):max(0, math.ceil(y + h)), max(0, int(x)):max(0, math.ceil(x + w))] = False
    r, g, b = im[..., 0], im[..., 1], im[..., 2]
    return {
        "points": int((keep & (g > 150) & (r < 100) & (b < 100)).sum()),
        "splat": int((keep & (r > 150) & (b > 150) & (g < 100)).sum()),
        "frusta": int((keep & (r > 200) & (g > 30) & (g < 140) & (b < 60)).sum()),
    }


def look(page) -> tuple[bytes, dict[str, int]]:
    """A screenshot of the page and its colour counts, outside the notices the viewer shows (role=alert)."""
    hide = page.locator("[role=alert]").evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })")
    png = page.screenshot()
    return png, colour_counts(png, hide)


# The first frame as the page shows it, found inside the page: every 50 ms the viewer's WebGL canvas (viser keeps
# its drawing buffer) is copied and its pixels counted with colour_counts' tests; a frame counts once the canvas and
# everything above it are fully opaque (viser's client keeps the canvas at 5 % opacity while an environment map
# loads, then fades it in). Unlike polling with screenshots (0.1-5 s each on software WebGL, and the first one waits
# for the page), this times the frame to 50 ms and does not slow the page. Resolves to the frame's epoch time in
# ms, or null after ``timeout`` ms.
_FIRST_FRAME_JS = """
([minimum, timeout]) => new Promise(resolve => {
  const copy = document.createElement('canvas');
  const ctx = copy.getContext('2d', {willReadFrequently: true});
  const start = performance.now();
  const check = () => {
    const now = performance.timeOrigin + performance.now();
    const canvases = [...document.querySelectorAll('canvas')];
    if (canvases.length) {
      const c = canvases.reduce((a, b) => a.width * a.height >= b.width * b.height ? a : b);
      let opacity = 1;
      for (let e = c; e; e = e.parentElement) opacity *= parseFloat(getComputedStyle(e).opacity);
      if (c.width > 0 && c.height > 0 && opacity >= 0.99) {
        copy.width = c.width; copy.height = c.height; ctx.drawImage(c, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let points = 0, splat = 0, frusta = 0;
        for (let i = 0; i < d.length; i += 4) {
          const r = d[i], g = d[i + 1], b = d[i + 2];
          if (g > 150 && r < 100 && b < 100) points++;
          if (r > 150 && b > 150 && g < 100) splat++;
          if (r > 200 && g > 30 && g < 140 && b < 60) frusta++;
        }
        if (points >= minimum && splat >= minimum && frusta >= minimum) { resolve(now); return; }
      }
    }
    if (performance.now() - start > timeout) { resolve(null); return; }
    setTimeout(check, 50);
  };
  check();
})
"""


def wait_first_frame(page, timeout: float = 30.0, minimum: int = 300) -> float | None:
    """Epoch seconds (``time.time()``'s clock) of the first frame whose canvas shows the points, the splat and the
    frusta, fully opaque; None when none did within ``timeout`` s. Confirm with :func:`look` (a screenshot also
    sees what covers the canvas)."""
    at = page.evaluate(_FIRST_FRAME_JS, [minimum, timeout * 1000.0])
    return None if at is None else at / 1000.0


def shows_scene(counts: dict[str, int], minimum: int = 300) -> bool:
    return all(counts[k] >= minimum for k in ("points", "splat", "frusta"))


def wait_for(page, predicate, timeout: float = 20.0, interval: float = 0.1) -> tuple[bytes, dict[str, int]]:
    """Screenshot until ``predicate(counts)`` holds; the last screenshot and counts (the caller asserts)."""
    deadline = time.perf_counter() + timeout
    while True:
        png, counts = look(page)
        if predicate(counts) or time.perf_counter() > deadline:
            return png, counts
        time.sleep(interval)


def picture_difference(a: bytes, b: bytes) -> float:
    """Fraction of pixels whose colour differs by more than 30 (of 255) in some channel."""
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB")).astype(np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).astype(np.int16)
    return float((np.abs(x - y).max(axis=-1) > 30).mean())


def first_frame(path: Path, out_png: Path | None = None, timeout: float = 30.0) -> dict:
    """Start a viewer for ``path`` with ``serve``, open it in headless Chromium and time the first frame that shows
    the scene (points, splat and frusta in their colours; :func:`wait_first_frame`, then a screenshot confirms).
    Times are seconds from the start of ``serve``."""
    from manyview.viewer import serve

    return time_page(lambda: serve(path, port=0), lambda h: h.url, lambda h: h.stop(), out_png, timeout,
                     started_key="serve_s")


def time_page(start, url_of, stop, out_png: Path | None = None, timeout: float = 30.0,
              started_key: str = "started_s") -> dict:
    """Time ``start()`` (returns a server handle), loading its page (``url_of(handle)``) in a browser that is
    already up, and the first frame that shows the scene; ``stop(handle)`` afterwards. Seconds from ``start()``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)  # the user's browser is already open: its start is not the viewer's
        try:
            page = browser.new_page(viewport=VIEWPORT)
            t0 = time.time()
            handle = start()
            t_started = time.time() - t0
            try:
                page.goto(url_of(handle))
                t_load = time.time() - t0
                at = wait_first_frame(page, timeout)
                png, counts = look(page)
                t_shot = time.time() - t0
            finally:
                stop(handle)
        finally:
            browser.close()
    if out_png is not None:
        out_png.write_bytes(png)
    return {started_key: round(t_started, 3), "page_load_s": round(t_load, 3),
            "first_frame_s": None if at is None else round(at - t0, 3), "screenshot_s": round(t_shot, 3),
            "shown": shows_scene(counts), "counts": counts}
