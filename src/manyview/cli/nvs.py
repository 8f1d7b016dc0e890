"""``manyview nvs``: render new views from posed photos with LVSM or Efficient-LVSM.

    manyview nvs --inputs scene/images --cameras scene --orbit 60 --out renders
    manyview nvs --inputs a.jpg b.jpg --cameras sparse/0 --targets wanted/transforms.json --out renders
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from manyview.errors import ManyviewError, require


@dataclass
class NVS:
    """Render new views of a scene from posed photos with LVSM or Efficient-LVSM (no per-scene optimisation).

    Inputs are resized to cover SIZE x SIZE and centre-cropped, as the models were trained; cameras are matched to
    the images by file name (or taken in order when no name matches and the counts agree). Targets come from a
    camera file (--targets) or an orbit (--orbit N: N cameras on a circle around the vertical the inputs share,
    through the point they look at, at their typical distance and height from it, with their field of view).
    Writes OUT/ as a dataset folder: images/ (the renders, PNG), sparse/0 and transforms.json (the target cameras
    at the render size), summary.json, and video.mp4 when the optional ``video`` extra (imageio-ffmpeg) is
    installed. OUT is built under a temporary name and renamed at the end.
    """

    inputs: list[Path]
    """Input images: a folder, or image files."""
    cameras: Path
    """Cameras of the inputs: a COLMAP model folder, a transforms.json, or a dataset folder holding either."""
    out: Path
    """Output folder (replaced when it holds an earlier manyview output; any other non-empty folder is refused)."""
    targets: Path | None = None
    """Cameras to render (COLMAP model / transforms.json / dataset folder), scaled and cropped like the inputs."""
    orbit: int | None = None
    """Render N cameras on an orbit that frames what the inputs look at, instead of --targets."""
    model: Literal["auto", "lvsm", "efficient-lvsm"] = "auto"
    """Model family; 'auto' takes the checkpoint's (or the bundled LVSM, then Efficient-LVSM)."""
    weights: str | None = None
    """A model folder (config.json + model.safetensors), a released .pt / .safetensors checkpoint, or a Hugging Face
    repo id. Default: the model bundled with manyview, when this installation has one."""
    size: int | None = None
    """Square render size (a multiple of the patch size); default: the model's training size."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    target_batch_size: int = 4
    """Targets rendered per forward pass (memory, not results)."""
    fps: int = 24
    """Frame rate of video.mp4."""

    def __post_init__(self):
        if self.orbit is not None:
            require(self.orbit >= 1, "--orbit", "at least 1", self.orbit)
        require(self.target_batch_size >= 1, "--target-batch-size", "at least 1", self.target_batch_size)
        require(self.fps >= 1, "--fps", "at least 1", self.fps)
        if self.size is not None:
            require(self.size >= 1, "--size", "at least 1", self.size)

    def interrupted(self) -> str:
        from manyview.cli.common import left_as_it_was

        return left_as_it_was(self.out)

    def run(self) -> None:
        import torch

        from manyview.cli.common import image_files, model_size
        from manyview.device import resolve_device
        from manyview.io.atomic import atomic_directory, atomic_open, check_output_folder
        from manyview.io.dataset import MARKER, read_cameras, write_dataset
        from manyview.io.video import write_video
        from manyview.nvs import pipeline
        from manyview.scene import Views, resize_cameras

        t0 = time.perf_counter()
        out = Path(self.out)
        if (self.targets is None) == (self.orbit is None):
            raise ManyviewError("give exactly one of --targets CAMERAS and --orbit N")
        check_output_folder(out, MARKER)
        files = image_files(self.inputs, "--inputs")
        device = resolve_device(self.device)
        model, source = pipeline.load_nvs_model(self.weights, self.model, device)
        size = model_size(model, self.size)
        views, by_name = pipeline.load_posed_inputs(files, self.cameras, size)
        if not by_name:
            print(f"note: no image name matches a camera name in {self.cameras}; cameras taken in order")
        if self.orbit is not None:
            targets = views.cameras.orbit(self.orbit)
            names = [f"orbit_{i:04d}.png" for i in range(self.orbit)]
        else:
            cams, cam_names = read_cameras(self.targets)
            targets = resize_cameras(cams, size, size).to(torch.float32)
            names = [f"{i:04d}_{Path(n).stem}.png" for i, n in enumerate(cam_names)]
        t1 = time.perf_counter()
        renders = pipeline.render_views(model, views, targets, self.target_batch_size)
        render_s = time.perf_counter() - t1
        summary = {"model": model.config.describe(), "weights": source, "inputs": [str(f) for f in files],
                   "input_views": len(views), "rendered_views": len(targets), "size": size,
                   "device": str(device), "render_s": round(render_s, 3),
                   "targets": str(self.targets) if self.targets is not None else f"orbit of {self.orbit}",
                   "pose_normalisation": "from the input cameras (scale factor "
                                         f"{model.config.scene_scale_factor})"}
        with atomic_directory(out) as tmp:
            write_dataset(tmp, Views(images=renders, cameras=targets, names=names))
            video = write_video(tmp / "video.mp4", renders, self.fps)
            summary["video"] = None if video is None else video.name
            with atomic_open(tmp / "summary.json", "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
                fh.write("\n")
        summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
        video = "" if summary["video"] is None else ", video.mp4"
        print(f"rendered {len(targets)} views ({size}x{size}) from {len(views)} inputs with {model.config.describe()} "
              f"in {render_s:.1f} s; wrote {out} (images/{video})")
