"""``manyview render``: images of a Gaussian-splat PLY from given cameras or an orbit.

    manyview render runs/scene_splat/splat.ply --orbit 60 --out renders
    manyview render runs/scene_splat/splat.ply --cameras scene/ --out renders --width 640 --height 360
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class Render:
    """Render a 3DGS PLY to OUT/00000.png ... (each written atomically), plus OUT/video.mp4 when imageio-ffmpeg
    is installed.

    Cameras: --cameras (COLMAP model, transforms.json or dataset folder) renders those views; --orbit N renders N
    views on a circle through the cameras' mean centre looking at the scene centre, using --cameras or, without
    it, the transforms.json that ``manyview splat`` writes beside the PLY.
    """

    scene: tyro.conf.Positional[Path]
    """The 3DGS PLY."""
    out: Path
    """Output folder for the PNGs."""
    cameras: Path | None = None
    orbit: int = 0
    """Number of orbit views (0: render --cameras as they are)."""
    width: int | None = None
    height: int | None = None
    """Output size (default: the cameras'; one of the two keeps the aspect ratio)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fps: int = 30

    def run(self) -> None:
        import torch

        from manyview.errors import ManyviewError
        from manyview.io.images import write_image
        from manyview.nvs.pipeline import orbit_cameras, read_cameras
        from manyview.progress import progress
        from manyview.splat import read_ply, render

        gaussians = read_ply(self.scene)
        source = self.cameras
        if source is None:
            source = self.scene.parent / "transforms.json"
            if not source.is_file():
                raise ManyviewError("no cameras: pass --cameras (COLMAP model, transforms.json or dataset folder); "
                                    "manyview splat writes transforms.json beside its PLY", self.scene)
        cams, _ = read_cameras(source)
        if self.orbit < 0:
            raise ManyviewError(f"--orbit must be >= 0, got {self.orbit}")
        if self.orbit:
            cams = orbit_cameras(cams, self.orbit)
        cams = _resize(cams, self.width, self.height).to(torch.float32)
        self.out.mkdir(parents=True, exist_ok=True)
        background = torch.tensor(self.background, dtype=torch.float32)
        frames = []
        for i in progress(range(len(cams)), desc="render"):
            with torch.no_grad():
                rgb = render(gaussians, cams[i:i + 1], background=background).rgb[0].clamp(0, 1)
            write_image(self.out / f"{i:05d}.png", rgb)
            frames.append((rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        video = _write_video(self.out / "video.mp4", frames, self.fps)
        print(f"wrote {len(frames)} images to {self.out}" + (f" and {video}" if video else ""))


def _resize(cams, width: int | None, height: int | None):
    from manyview.errors import ManyviewError

    if width is None and height is None:
        return cams
    h0, w0 = (int(v) for v in cams.image_size.reshape(-1, 2)[0])
    if width is None:
        width = max(1, round(w0 * height / h0))
    if height is None:
        height = max(1, round(h0 * width / w0))
    if width < 1 or height < 1:
        raise ManyviewError(f"--width and --height must be positive, got {width}x{height}")
    return cams.resized(height, width)


def _write_video(path: Path, frames: list, fps: int) -> Path | None:
    """An H.264 mp4 of ``frames`` (H, W, 3) uint8 via imageio-ffmpeg, atomically; None when it is not installed."""
    import importlib.util

    if len(frames) < 2 or importlib.util.find_spec("imageio_ffmpeg") is None:
        return None
    import imageio_ffmpeg

    from manyview.io.atomic import atomic_path

    h, w = frames[0].shape[:2]
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, macro_block_size=1)
        writer.send(None)
        for frame in frames:
            writer.send(frame.tobytes())
        writer.close()
    return path
