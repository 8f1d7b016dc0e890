"""``manyview nvs`` (render new views), ``manyview eval nvs`` (score them) and the ``manyview train lvsm`` /
``manyview train efficient-lvsm`` presets.

    manyview nvs --inputs scene/images --cameras scene --orbit 60 --out renders
    manyview nvs --inputs a.jpg b.jpg --cameras sparse/0 --targets wanted/transforms.json --out renders
    manyview eval nvs --re10k re10k/test --index evaluation_index_re10k.json --weights model_dir
    manyview train efficient-lvsm bundled --out runs/efficient_lvsm_bundled
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from manyview.errors import ManyviewError
from manyview.train.config import TrainConfig
from manyview.train.lvsm_task import LVSMTaskConfig, preset


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ManyviewError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def _size(model, size: int | None) -> int:
    p = model.config.patch_size
    size = model.config.image_size if size is None else size
    if size < p or size % p:
        raise ManyviewError(f"--size {size} must be a positive multiple of the model's patch size {p}")
    return size


@dataclass
class NVS:
    """Render new views of a scene from posed photos with LVSM or Efficient-LVSM (no per-scene optimisation).

    Inputs are resized to cover SIZE x SIZE and centre-cropped, as the models were trained; cameras are matched to
    the images by file name (or taken in order when no name matches and the counts agree). Targets come from a
    camera file (--targets) or an orbit (--orbit N: N cameras on a circle through the inputs' mean centre, looking
    at the point the inputs look at). Writes OUT/ as a dataset folder: images/ (the renders, PNG), sparse/0 and
    transforms.json (the target cameras at the render size), summary.json, and video.mp4 when the optional
    ``video`` extra (imageio-ffmpeg) is installed. OUT is built under a temporary name and renamed at the end.
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
    """Render N cameras on an orbit instead of --targets."""
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

    def run(self) -> None:
        import torch

        from manyview.io.atomic import atomic_directory, atomic_open
        from manyview.io.dataset import MARKER, write_dataset
        from manyview.io.images import list_images
        from manyview.nvs import pipeline
        from manyview.scene import Views

        t0 = time.perf_counter()
        out = Path(self.out)
        if (self.targets is None) == (self.orbit is None):
            raise ManyviewError("give exactly one of --targets CAMERAS and --orbit N")
        if self.orbit is not None and self.orbit < 1:
            raise ManyviewError(f"--orbit needs at least one camera, got {self.orbit}")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
            raise ManyviewError("refusing to replace: not an empty folder or an earlier manyview output", out)
        if not self.inputs:
            raise ManyviewError("no input images given: pass a folder of images or image files to --inputs")
        files = list_images(self.inputs[0]) if len(self.inputs) == 1 and self.inputs[0].is_dir() else self.inputs
        if not files:
            raise ManyviewError("no images in this folder", self.inputs[0])
        device = _device(self.device)
        model, source = pipeline.load_nvs_model(self.weights, self.model, device)
        size = _size(model, self.size)
        views, by_name = pipeline.load_posed_inputs(files, self.cameras, size)
        if not by_name:
            print(f"note: no image name matches a camera name in {self.cameras}; cameras taken in order")
        if self.orbit is not None:
            targets = pipeline.orbit_cameras(views.cameras, self.orbit)
            names = [f"orbit_{i:04d}.png" for i in range(self.orbit)]
        else:
            cams, cam_names = pipeline.read_cameras(self.targets)
            targets = pipeline.fit_cameras(cams, size).to(torch.float32)
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
            summary["video"] = _write_video(tmp / "video.mp4", renders, self.fps)
            with atomic_open(tmp / "summary.json", "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
                fh.write("\n")
        summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
        video = "" if summary["video"] is None else ", video.mp4"
        print(f"rendered {len(targets)} views ({size}x{size}) from {len(views)} inputs with {model.config.describe()} "
              f"in {render_s:.1f} s; wrote {out} (images/{video})")


def _write_video(path: Path, frames, fps: int) -> str | None:
    """frames (T, 3, H, W) in [0, 1] -> an H.264 mp4 when imageio-ffmpeg is installed; the file name, else None."""
    import importlib.util

    if importlib.util.find_spec("imageio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        return None
    import imageio.v2 as imageio

    data = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    try:
        for frame in data:
            writer.append_data(frame)
    finally:
        writer.close()
    return path.name


@dataclass
class EvalNVS:
    """Score LVSM / Efficient-LVSM (default: the bundled model) and two naive baselines (copy the nearest input
    view; the mean of the inputs) by the pixelSplat protocol: PSNR, SSIM, LPIPS-VGG (n/a without its weights),
    averaged over each scene's targets, then over scenes. Datasets: a RealEstate10K chunk folder with an evaluation
    index (--re10k, --index), and held-out synthetic scenes (--synthetic N). Prints Markdown tables, writes JSON."""

    weights: str | None = None
    """A model folder, a released checkpoint, or a Hugging Face repo id; default: the bundled model."""
    model: Literal["auto", "lvsm", "efficient-lvsm"] = "auto"
    re10k: Path | None = None
    """RealEstate10K chunk folder (pixelSplat layout: *.torch + index.json), e.g. re10k/test."""
    index: Path | None = None
    """Evaluation index JSON ({scene: {"context": [...], "target": [...]} | null}), e.g. pixelSplat's
    evaluation_index_re10k.json."""
    synthetic: int = 16
    """Held-out synthetic scenes to score (0: none)."""
    size: int | None = None
    """Square evaluation size; default 256 for RealEstate10K (the protocol) and the model's training size for
    synthetic scenes."""
    limit: int | None = None
    """Score at most this many RealEstate10K scenes (in index order)."""
    lpips_weights: Path | None = None
    """LPIPS weights (see manyview.metrics.image); default $MANYVIEW_LPIPS_WEIGHTS."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    target_batch_size: int | None = None
    out: Path = Path("results/eval_nvs.json")

    def run(self) -> None:
        from manyview.io.atomic import atomic_open
        from manyview.nvs import evaluate as ev
        from manyview.nvs.pipeline import load_nvs_model
        from manyview.progress import progress
        from manyview.train.lvsm_task import LVSMDataConfig

        if self.re10k is None and self.synthetic <= 0:
            raise ManyviewError("nothing to evaluate: pass --re10k FOLDER --index JSON and/or --synthetic N")
        if (self.re10k is None) != (self.index is None):
            raise ManyviewError("--re10k and --index go together (the chunk folder and its evaluation index)")
        model, source = load_nvs_model(self.weights, self.model, _device(self.device))
        report = {"model": model.config.describe(), "weights": source}
        tables = []
        if self.re10k is not None:
            size = _size(model, self.size or ev.PROTOCOL_SIZE)
            if size != model.config.image_size:
                print(f"note: evaluating at {size}x{size}; the model was trained at {model.config.image_size}")
            info = {"protocol": f"pixelSplat index, LANCZOS + centre crop to {size}", "size": size}
            examples = ev.re10k_examples(self.re10k, self.index, size, self.limit, info)
            bar = progress(total=self.limit, desc="re10k")
            try:
                result = ev.evaluate(model, examples, f"RealEstate10K ({self.re10k})", self.lpips_weights,
                                     self.target_batch_size, progress=lambda i: bar.update(1))
            finally:
                bar.close()
            result.info.update(info)
            report["re10k"] = result.to_dict()
            tables.append(result.markdown())
        if self.synthetic > 0:
            size = _size(model, self.size)
            data = LVSMDataConfig(image_size=size)
            bar = progress(total=self.synthetic, desc="synthetic")
            try:
                result = ev.evaluate(model, ev.synthetic_examples(data, self.synthetic), "held-out synthetic scenes",
                                     self.lpips_weights, self.target_batch_size, progress=lambda i: bar.update(1))
            finally:
                bar.close()
            result.info.update(protocol=f"2 inputs (window ends), 3 targets between them, {size}x{size}",
                               size=size, frames=data.frames, kinds=list(data.kinds))
            report["synthetic"] = result.to_dict()
            tables.append(result.markdown())
        print(f"\n{model.config.describe()} ({source})\n")
        print("\n\n".join(tables))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        print(f"\nwrote {self.out}")


# --------------------------------------------------------------------------------------------- training presets
@dataclass
class LVSMTrain:
    """Train LVSM / Efficient-LVSM on synthetic scenes (or a RealEstate10K chunk folder: --task.data.source re10k
    --task.data.root DIR). MSE + 0.5 x VGG-19 perceptual loss when $MANYVIEW_VGG19_WEIGHTS names the weights, MSE
    alone otherwise. OUT/final is a model folder for ``manyview nvs --weights``."""

    train: TrainConfig
    task: LVSMTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def run(self) -> None:
        from manyview.train.lvsm_task import LVSMTask
        from manyview.train.trainer import train

        cfg = self.train if self.out is None else replace(self.train, out_dir=self.out)
        result = train(cfg, LVSMTask(self.task))
        if result.history:
            last = result.history[-1]
            print(f"step {result.step}: loss {last['loss']:.4g}, PSNR {last['psnr']:.2f} dB; metrics in "
                  f"{Path(cfg.out_dir) / 'metrics.csv'}")
        if (Path(cfg.out_dir) / "final").is_dir():
            print(f"final weights in {Path(cfg.out_dir) / 'final'}")


def _train_preset(variant: str, name: str) -> LVSMTrain:
    run = preset(variant, name)  # type: ignore[arg-type]
    return LVSMTrain(run.train, run.task)


def _presets(variant: str):
    return Union[
        Annotated[LVSMTrain, tyro.conf.subcommand("tiny", default=_train_preset(variant, "tiny"),
                                                  description="32 x 32, four blocks of width 64: seconds, for checks")],
        Annotated[LVSMTrain, tyro.conf.subcommand("bundled", default=_train_preset(variant, "bundled"),
                                                  description="the recipe of the bundled weights (32 x 32, 3000 "
                                                              "steps; 20 min (Efficient-LVSM) / 50 min (LVSM) on 2 "
                                                              "CPU cores)")],
    ]


LVSMTrainPresets = _presets("lvsm")
EfficientLVSMTrainPresets = _presets("efficient-lvsm")
