"""``report.html``: one self-contained page about a run (every picture inline, no request leaves the file).

Sections: the input photos (thumbnails; held-out and unregistered ones marked), a top view of the cameras and
points (inline SVG, looking down the vertical the cameras share), the splat's renders beside the held-out photos
with PSNR / SSIM, orbit stills (the video beside the page), the time of each stage, and the commands that
reproduce the run.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from manyview.io.atomic import atomic_open
from manyview.pipeline.run_folder import REPORT_NAME, STAGES, read_marker
from manyview.recon.posed_photos import PhotosLike
from manyview.scene import Views

THUMB_WIDTH = 200  # px, input thumbnails
SVG_SIZE = 520  # px, the top view
SVG_POINTS = 4000  # points drawn at most


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _jpeg(image: torch.Tensor, quality: int = 85) -> bytes:
    from manyview.io.image_writers import encode_jpeg

    return encode_jpeg(image, quality)


def thumbnails(photos: PhotosLike) -> list[tuple[str, str]]:
    """(name, data URI) of each photo, scaled to THUMB_WIDTH wide."""
    from manyview.io.images import ImageLoadPolicy, read_image

    out = []
    if isinstance(photos, Views):
        for i in range(len(photos)):
            h, w = photos.height, photos.width
            image = torch.nn.functional.interpolate(photos.images[i:i + 1], size=(max(1, round(h * THUMB_WIDTH / w)),
                                                    THUMB_WIDTH), mode="area")[0]
            name = photos.names[i] if i < len(photos.names) else f"{i:05d}.png"
            out.append((name, _data_uri(_jpeg(image))))
        return out
    for path in photos:
        path = Path(path)
        image, _ = read_image(path, ImageLoadPolicy(long_side=THUMB_WIDTH))
        out.append((path.name, _data_uri(_jpeg(image))))
    return out


def _image_uri(path: Path) -> str:
    from manyview.io.images import read_image

    image, _ = read_image(path)
    return _data_uri(_jpeg(image, 90))


def top_view_svg(c2w: torch.Tensor, points: torch.Tensor, colors: torch.Tensor | None,
                 held_out: Sequence[bool]) -> str:
    """Cameras (centres and viewing directions) and points seen from above: projected onto the plane
    perpendicular to the cameras' shared vertical, framed on the cameras with half their extent around them."""
    from manyview.geometry.poses import up_direction

    c2w = c2w.double()
    up = up_direction(c2w)
    a = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    if a.norm() < 1e-3:
        a = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    a = a / a.norm()
    b = torch.linalg.cross(up, a)
    basis = torch.stack([a, b], 1)  # (3, 2)
    centers = c2w[:, :3, 3] @ basis
    forward = c2w[:, :3, 2] @ basis
    pts = points.double() @ basis if len(points) else torch.zeros(0, 2, dtype=torch.float64)
    if len(pts) > SVG_POINTS:
        keep = torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))[:SVG_POINTS]
        pts, colors = pts[keep], None if colors is None else colors[keep]
    # Framed on the cameras with half their extent around them (the scene they look at, not the far background
    # their points reach), unless they stand too close together to frame anything: then on the points' middle.
    low, high = centers.amin(0), centers.amax(0)
    span = float((high - low).max())
    if len(pts) >= 10:
        p_low, p_high = torch.quantile(pts, 0.1, dim=0), torch.quantile(pts, 0.9, dim=0)
        if span < 0.05 * float((p_high - p_low).max()):
            low, high = torch.minimum(low, p_low), torch.maximum(high, p_high)
            span = float((high - low).max())
    span = span or 1.0
    margin = 0.5 * span
    scale = (SVG_SIZE - 20) / (span + 2 * margin)
    mid = (low + high) / 2

    def xy(p: torch.Tensor) -> tuple[float, float]:
        q = (p - mid) * scale
        return SVG_SIZE / 2 + float(q[0]), SVG_SIZE / 2 - float(q[1])

    inside = ((pts - mid).abs() <= span / 2 + margin).all(-1) if len(pts) else torch.zeros(0, dtype=torch.bool)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_SIZE}" height="{SVG_SIZE}" '
             f'viewBox="0 0 {SVG_SIZE} {SVG_SIZE}" style="background:#111">']
    for k in torch.nonzero(inside).flatten().tolist():
        x, y = xy(pts[k])
        rgb = "#9aa" if colors is None else "#%02x%02x%02x" % tuple(
            int(round(float(c) * 255)) for c in colors[k].clamp(0, 1))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.2" fill="{rgb}"/>')
    arrow = 0.12 * span
    for i in range(len(centers)):
        x, y = xy(centers[i])
        d = forward[i] / (forward[i].norm() + 1e-12)
        x2, y2 = xy(centers[i] + d * arrow)
        colour = "#ffb000" if held_out[i] else "#3af"
        parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{margin:0;font-size:.75em;text-align:center}
.grid img{display:block;border:3px solid transparent} .held img{border-color:#ffb000}
.lost img{opacity:.35;border-color:#c33} table{border-collapse:collapse} td,th{padding:4px 10px;text-align:left}
tr:nth-child(even){background:#f4f4f4} .pair img{max-width:49%} code,pre{background:#f4f4f4;padding:2px 4px}
pre{padding:8px;overflow-x:auto} .note{color:#666;font-size:.9em}
"""


def write_report(run_dir: Path, photos: PhotosLike, record: dict, commands: list[str]) -> Path:
    """Build ``run_dir/report.html`` from the committed stages; returns its path."""
    from manyview.io.dataset import read_cameras
    from manyview.io.ply import read_ply

    run_dir = Path(run_dir)
    markers = {stage: read_marker(run_dir, stage) for stage in STAGES}
    poses_summary = json.loads((run_dir / "poses" / "summary.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    cams, files = read_cameras(run_dir / "poses")
    marker = json.loads((run_dir / "poses" / "manyview.json").read_text(encoding="utf-8"))
    by_stem = dict(zip(marker["files"], marker["names"]))  # the dataset's file stems -> the photos' names
    names = [by_stem.get(Path(f).stem, f) for f in files]
    cloud = read_ply(run_dir / "poses" / "points.ply") if (run_dir / "poses" / "points.ply").is_file() else None
    held_names = {row["name"] for row in metrics["held_out"]}
    unregistered = set(poses_summary.get("unregistered", []))
    options = record.get("options", {})
    e = html.escape

    body = [f"<h1>manyview run: {e(str(record.get('source', '')))}</h1>"]
    splat_info = (markers["splat"] or {}).get("info", {})
    body.append("<table>")
    rows = [("photos", f"{poses_summary['photos']} ({poses_summary['registered']} posed"
                       + (f", {len(unregistered)} not registered" if unregistered else "") + ")"),
            ("poses", f"{options.get('poses')} ({poses_summary.get('camera_model', 'no distortion model')}"
                      + (", photos undistorted" if poses_summary.get("undistorted") else "") + ")"),
            ("splat", f"{splat_info.get('gaussians', '–')} Gaussians after {splat_info.get('steps', '–')} steps on "
                      f"{splat_info.get('train_views', '–')} photos at {metrics['image_size'][1]}x"
                      f"{metrics['image_size'][0]}"),
            ("held-out PSNR / SSIM", f"{_fmt(metrics['psnr'])} dB / {_fmt(metrics['ssim'], 3)} over "
                                     f"{len(metrics['held_out'])} photos (every {metrics['test_every']}th)"),
            ("held-out PSNR, exposure fitted", f"{_fmt(metrics.get('psnr_exposure_fitted'))} dB"),
            ("training-view PSNR / SSIM", f"{_fmt(metrics['train_psnr'])} dB / {_fmt(metrics['train_ssim'], 3)} over "
                                          f"{len(metrics['train'])} photos")]
    body += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    body.append("</table>")
    body.append(f'<p class="note">Exposure: {e(metrics.get("exposure", ""))}.</p>')

    body.append("<h2>Input photos</h2><p class='note'>Orange: held out of training. Faded red: not "
                "registered (no camera).</p><div class='grid'>")
    for name, uri in thumbnails(photos):
        cls = "lost" if name in unregistered else "held" if name in held_names else ""
        body.append(f'<figure class="{cls}"><img src="{uri}" width="{THUMB_WIDTH}" alt="{e(name)}">'
                    f"<figcaption>{e(name)}</figcaption></figure>")
    body.append("</div>")

    body.append("<h2>Cameras and points, from above</h2>")
    held = [n in held_names for n in names]
    xyz = cloud.xyz if cloud is not None else torch.zeros(0, 3)
    body.append(top_view_svg(cams.c2w, xyz, None if cloud is None else cloud.rgb, held))
    body.append(f"<p class='note'>{len(cams)} cameras (blue; orange: held out) and {len(xyz)} points, seen down "
                "the vertical the cameras share.</p>")

    body.append("<h2>Held-out photos and the splat's renders</h2>")
    if not metrics["held_out"]:
        body.append("<p>No photo was held out (test_every 0, or fewer than two photos).</p>")
    body.append("<table>")
    for row in metrics["held_out"]:
        photo = _image_uri(run_dir / "evaluate" / row["photo"])
        render = _image_uri(run_dir / "evaluate" / row["render"])
        body.append(f"<tr><td><b>{e(row['name'])}</b><br>PSNR {row['psnr']:.2f} dB<br>SSIM {row['ssim']:.3f}</td>"
                    f"<td class='pair'><img src='{photo}' alt='photo'> <img src='{render}' alt='render'></td></tr>")
    body.append("</table><p class='note'>Left: the photo (undistorted, at the training size); right: the render "
                "from its camera.</p>")

    orbit_info = (markers["orbit"] or {}).get("info", {})
    body.append("<h2>Orbit</h2><div class='grid'>")
    for still in orbit_info.get("stills", []):
        body.append(f"<figure><img src='{_image_uri(run_dir / 'orbit' / still)}' width='260'></figure>")
    body.append("</div>")
    if orbit_info.get("video"):
        body.append(f"<p><a href='orbit/{e(orbit_info['video'])}'>orbit/{e(orbit_info['video'])}</a> "
                    f"({orbit_info['frames']} frames at {orbit_info['fps']} fps, beside this page)</p>")
    else:
        body.append("<p class='note'>No video: install the video extra (imageio-ffmpeg).</p>")

    body.append("<h2>Time per stage</h2><table>")
    total = 0.0
    for stage in STAGES[:-1]:
        seconds = (markers[stage] or {}).get("seconds")
        total += seconds or 0.0
        body.append(f"<tr><th>{stage}</th><td>{_seconds(seconds)}</td></tr>")
    body.append(f"<tr><th>total (before the report)</th><td>{_seconds(total)}</td></tr></table>")

    body.append("<h2>Reproduce</h2><pre>" + e("\n".join(commands)) + "</pre>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>manyview run</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    path = run_dir / REPORT_NAME
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


__all__ = ["thumbnails", "top_view_svg", "write_report"]
