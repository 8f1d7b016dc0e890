"""``manyview render``: images of a Gaussian-splat PLY from given cameras or an orbit.

    manyview render runs/scene_splat/splat.ply --orbit 60 --out renders
    manyview render any_3dgs_scene.ply --orbit 60 --out renders --width 640 --height 480
    manyview render runs/scene_splat/splat.ply --cameras scene/ --out renders --width 640 --height 360
    manyview render city.ply --orbit 60 --out renders --max-memory 8
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import tyro

from manyview.errors import ManyviewError, require

# Written last into every render folder: marks it as manyview's own, so a later render may replace it.
RENDER_MARKER = "render.json"
# Reading a PLY into memory and rendering it takes about this many times the file's size (read_ply's arrays and
# the render's per-Gaussian buffers, measured): beyond the budget the file is streamed instead.
IN_MEMORY_FACTOR = 4
# Gaussians read (evenly spaced through the file) to bound a streamed splat for its orbit.
BOUNDS_SAMPLE = 1 << 20


@dataclass
class Render:
    """Render a 3DGS PLY to OUT/00000.png ..., plus OUT/video.mp4 when imageio-ffmpeg is installed, and
    OUT/render.json (what was rendered).

    Cameras: --cameras (COLMAP model, transforms.json or dataset folder) renders those views. --orbit N renders N
    views on a circle that frames the scene. With cameras (--cameras or, without it, the transforms.json that
    ``manyview splat`` writes beside the PLY) it circles the vertical the cameras share around the point they
    look at, at their typical distance and height, with their field of view (cameras that look around, as in a
    room, are circled from where they walked; forward-facing ones look at the opaque Gaussians' centre). With no
    cameras at all (any 3DGS PLY) it circles the robust bounding box of the opaque Gaussians (opacity above 0.5;
    2nd-98th percentile of their positions) 20 degrees above it, as close as keeps the whole box in view with a
    50-degree horizontal field of view, at --width x --height (default 512 x 512), around --up (default +z). OUT
    is built under a temporary name and renamed at the end; it replaces an earlier render, never a folder that
    holds other files.

    Memory: a PLY whose reading and rendering need more than --max-memory (about 4x the file; default budget: half
    of the memory available) is rendered out of core: each view streams the file in chunks and keeps only the
    splats it sees, within the budget, giving the same images (manyview.splat.out_of_core). --max-memory always
    streams; the orbit without cameras then bounds an evenly spaced sample of up to 2^20 Gaussians.
    """

    scene: tyro.conf.Positional[Path]
    """The 3DGS PLY."""
    out: Path
    """Output folder for the PNGs (new, empty, or an earlier render's)."""
    cameras: Path | None = None
    orbit: int = 0
    """Number of orbit views (0: render --cameras as they are); works without cameras, around the Gaussians."""
    up: tuple[float, float, float] | None = None
    """World direction that is up in the orbit (default: the vertical the cameras share; +z without cameras)."""
    width: int | None = None
    height: int | None = None
    """Output size (default: the cameras', or 512 x 512 for an orbit without cameras; one of the two keeps the
    aspect ratio, square without cameras)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB in [0, 1] behind the Gaussians."""
    fps: int = 30
    max_memory: float | None = None
    """GIB: the memory budget; given, the PLY is always streamed from disk (see Memory above)."""

    def __post_init__(self):
        require(self.orbit >= 0, "--orbit", "at least 0", self.orbit)
        for option, value in (("--width", self.width), ("--height", self.height)):
            if value is not None:
                require(value >= 1, option, "at least 1", value)
        require(all(0 <= c <= 1 for c in self.background), "--background", "three numbers between 0 and 1",
                self.background)
        require(self.fps >= 1, "--fps", "at least 1", self.fps)
        if self.max_memory is not None:
            require(self.max_memory > 0, "--max-memory", "a positive number of GiB", self.max_memory)
        if self.up is not None:
            require(any(c != 0 for c in self.up), "--up", "a non-zero direction", self.up)

    def interrupted(self) -> str:
        from manyview.cli.common import left_as_it_was

        return left_as_it_was(self.out)

    def run(self) -> None:
        import torch

        from manyview.io.atomic import atomic_directory, atomic_open, check_output_folder
        from manyview.io.image_writers import write_image
        from manyview.io.video import open_video
        from manyview.progress import progress
        from manyview.splat import read_ply, render

        check_output_folder(self.out, RENDER_MARKER)
        background = torch.tensor(self.background, dtype=torch.float32)
        store, budget = self._streamed_store()
        gaussians = read_ply(self.scene) if store is None else None
        if len(store if gaussians is None else gaussians) == 0:
            raise ManyviewError("holds no Gaussians: there is nothing to render", self.scene)
        if store is None:
            cams, source = self._cameras(gaussians)
            draw = lambda cam: render(gaussians, cam, background=background)
        else:
            from manyview.splat.out_of_core import render_out_of_core

            cams, source = self._cameras(store.sample(max(1, min(BOUNDS_SAMPLE, budget // 256))))
            draw = lambda cam: render_out_of_core(store, cam, background=background, max_memory=budget)
        with atomic_directory(self.out) as tmp:
            with open_video(tmp / "video.mp4", self.fps) if len(cams) >= 2 else nullcontext() as video:
                for i in progress(range(len(cams)), desc="render"):
                    with torch.no_grad():
                        rgb = draw(cams[i:i + 1]).rgb[0].clamp(0, 1)
                    write_image(tmp / f"{i:05d}.png", rgb)
                    if video is not None:
                        video.add(rgb)
            h, w = (int(v) for v in cams.image_size.reshape(-1, 2)[0])
            record = {"format": "manyview-render", "scene": str(self.scene), "cameras": source,
                      "orbit": self.orbit, "frames": len(cams), "size": [h, w], "background": list(self.background),
                      "video": "video.mp4" if video is not None else None,
                      "out_of_core": None if store is None else {"max_memory_bytes": budget}}
            with atomic_open(tmp / RENDER_MARKER, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1)
                fh.write("\n")
        print(f"wrote {len(cams)} images to {self.out}" + (f" and {self.out / 'video.mp4'}" if video else ""))

    def _streamed_store(self):
        """(the PLY read in place, the budget in bytes) when it is to be streamed, else (None, budget)."""
        from manyview.splat.mapped_ply import MappedGaussians
        from manyview.splat.out_of_core import GIB, default_max_memory, gib

        budget = default_max_memory() if self.max_memory is None else int(self.max_memory * GIB)
        try:
            store = MappedGaussians(self.scene)
        except ManyviewError as e:
            if self.max_memory is not None:
                raise  # streaming was asked for: say why this file cannot be
            size = self.scene.stat().st_size if self.scene.is_file() else 0
            if IN_MEMORY_FACTOR * size > budget:  # nor can it be read into memory: say both
                raise ManyviewError(f"{e.message}; and reading it into memory would take about "
                                    f"{gib(IN_MEMORY_FACTOR * size)}, more than the {gib(budget)} budget (half of "
                                    "the memory available; --max-memory sets it)", self.scene) from None
            return None, budget  # read_ply reads the other PLY forms, or says what is wrong
        if self.max_memory is None and IN_MEMORY_FACTOR * store.nbytes <= budget:
            return None, budget
        return store, budget

    def _cameras(self, gaussians):
        """The cameras to render, float32, and where they came from (for render.json)."""
        import torch

        from manyview.io.dataset import read_cameras
        from manyview.splat.bounds import ORBIT_SIZE, splat_orbit

        up = None if self.up is None else torch.tensor(self.up, dtype=torch.float64)
        source = self.cameras
        if source is None and not (self.scene.parent / "transforms.json").is_file():
            if not self.orbit:
                raise ManyviewError("no cameras: pass --cameras (COLMAP model, transforms.json or dataset folder), "
                                    "or --orbit N to circle the Gaussians; manyview splat writes transforms.json "
                                    "beside its PLY", self.scene)
            size = ORBIT_SIZE
            if self.width is not None or self.height is not None:  # one of the two: square
                size = (self.height or self.width, self.width or self.height)
            cams = splat_orbit(gaussians, self.orbit, image_size=size, up=up)
            return cams, "orbit around the opaque Gaussians' bounds"
        if source is None:
            source = self.scene.parent / "transforms.json"
        cams, _ = read_cameras(source)
        if len(cams) == 0:
            raise ManyviewError("no cameras in this file or folder", source)
        if self.orbit:
            cams = splat_orbit(gaussians, self.orbit, cams, up=up)
        return _resize(cams, self.width, self.height).to(torch.float32), str(source)


def _resize(cams, width: int | None, height: int | None):
    if width is None and height is None:
        return cams
    h0, w0 = (int(v) for v in cams.image_size.reshape(-1, 2)[0])
    if width is None:
        width = max(1, round(w0 * height / h0))
    if height is None:
        height = max(1, round(h0 * width / w0))
    return cams.resized(height, width)
