"""The stages of ``manyview run``, each a function from the run folder's earlier stages to its own output folder.

- ``poses``: COLMAP SfM (default), Fast3R alone, or Fast3R + bundle adjustment, written as a reconstruct output;
- ``splat``: Gaussians trained on the posed photos (3DGS recipe), initialised from the poses stage's points,
  every ``test_every``-th photo held out, images at most ``max_width`` wide; resumable from its checkpoints;
- ``evaluate``: the held-out photos beside the splat's renders of them, PSNR / SSIM per view (and on a few
  training views, to show the gap);
- ``orbit``: stills and a video of an orbit around the scene (``Cameras.orbit`` of the training cameras).

Every stage returns the small dict its marker records (what the report shows).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory, atomic_open
from manyview.pipeline.config import RunConfig
from manyview.pipeline.run_folder import SPLAT_PARTIAL, commit_folder, write_marker
from manyview.recon.posed_photos import PhotosLike

Log = Callable[[str], None]
MAX_TRAIN_EVAL_VIEWS = 8  # training views scored beside the held-out ones
STILLS = 8  # orbit frames kept as PNG


def load_fast3r(weights: str | None):
    """(Fast3R model, its training image size, what was loaded): ``weights`` or the bundled model."""
    from manyview.assets import bundled_model_dir
    from manyview.models.fast3r import Fast3R, training_image_size

    source = weights if weights is not None else bundled_model_dir("fast3r")
    if source is None:
        raise ManyviewError("no bundled Fast3R in this installation; pass --weights (a folder with config.json "
                            "and model.safetensors)")
    model = Fast3R.from_pretrained(source)
    return model, training_image_size(model.config), weights or "bundled:fast3r_bundled"


def poses(photos: PhotosLike, out: Path, config: RunConfig, progress: bool) -> dict:
    """Cameras for the photos, written to ``out`` (a reconstruct output) with its stage marker."""
    from manyview.recon.posed_photos import colmap_poses, fast3r_poses, fast3r_refined_poses, write_reconstruction

    t0 = time.perf_counter()
    weights = None
    if config.poses == "colmap":
        posed = colmap_poses(photos, camera_model=config.camera_model, matcher=config.matcher, seed=config.seed,
                             progress=progress)
    else:
        model, size, weights = load_fast3r(config.weights)
        if config.poses == "fast3r":
            posed = fast3r_poses(photos, model, size=size, device=config.device, seed=None, progress=progress)
        else:
            posed = fast3r_refined_poses(photos, model, size=size, camera_model=config.camera_model,
                                         device=config.device, seed=config.seed, progress=progress)
    points = posed.points.subsample(config.max_points)
    summary = {**posed.summary, "weights": weights}
    info = {k: summary[k] for k in ("model", "photos", "registered", "unregistered", "image_size")}
    info.update({k: summary[k] for k in ("camera_model", "camera_params", "mean_reprojection_error_px")
                 if k in summary})
    info["points"] = len(points)
    with atomic_directory(out) as tmp:
        write_reconstruction(tmp, posed.views, points, summary)
        write_marker(tmp, "poses", time.perf_counter() - t0, info)
    return info


def _training_config(config: RunConfig):
    from manyview.splat.strategy import DensifyStrategy
    from manyview.splat.trainer import SplatTrainConfig

    # a far shell needs pruning by size relative to distance, or its Gaussians go at the first opacity reset
    densify = DensifyStrategy(prune_scale_by_distance=config.far_points > 0)
    return SplatTrainConfig(iterations=config.iterations, test_every=config.test_every, seed=config.seed,
                            backend=config.backend, checkpoint_every=config.checkpoint_every, scale_schedule=True,
                            exposure=config.exposure, far_points=config.far_points, densify=densify)


def splat(run_dir: Path, config: RunConfig, progress: bool, log: Log) -> dict:
    """Train in ``splat.partial`` (continuing from its latest checkpoint), then commit it as ``splat``."""
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import SplatTrainer

    t0 = time.perf_counter()
    views, points = load_training_views(run_dir / "poses", config.max_width)
    partial = run_dir / SPLAT_PARTIAL
    trainer = SplatTrainer(views, partial, _training_config(config), points=points)
    init = "random Gaussians" if points is None else f"{len(points.xyz)} points"
    log(f"  training on {len(trainer.train_ids)} photos ({views.width}x{views.height}), {len(trainer.test_ids)} "
        f"held out, from {init}, {config.iterations} steps")
    if trainer.checkpoint_dirs():  # an interrupted earlier session: continue from its latest checkpoint
        trainer.resumed_from = trainer.load_checkpoint()
        log(f"  continuing from the checkpoint at step {trainer.resumed_from}")
    earlier = trainer.train_time  # training time of earlier sessions
    result = trainer.train(show_progress=progress)
    info = {"gaussians": result["gaussians"], "steps": result["step"], "resumed_from": trainer.resumed_from,
            "train_seconds": round(result["train_seconds"], 1), "seconds_per_step": result["seconds_per_step"],
            "held_out": len(trainer.test_ids), "train_views": len(trainer.train_ids),
            "image_size": [views.height, views.width], "psnr": result.get("psnr"), "ssim": result.get("ssim")}
    # the stage's time: this session's, plus the training time of earlier sessions
    write_marker(partial, "splat", earlier + time.perf_counter() - t0, info)
    commit_folder(partial, run_dir / "splat")
    return info


@torch.no_grad()
def evaluate(run_dir: Path, config: RunConfig, progress: bool) -> dict:
    """Renders of the held-out photos beside them, and PSNR / SSIM (held out, and on a few training views)."""
    from manyview.io.image_writers import write_image
    from manyview.metrics.image import psnr, ssim
    from manyview.progress import progress as progress_bar
    from manyview.splat import read_ply, render
    from manyview.splat.appearance import exposure_fitted
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import split_views

    t0 = time.perf_counter()
    views, _ = load_training_views(run_dir / "poses", config.max_width)
    gaussians = read_ply(run_dir / "splat" / "splat.ply")
    train_ids, test_ids = split_views(len(views), config.test_every)
    step = max(1, len(train_ids) // MAX_TRAIN_EVAL_VIEWS)
    scored_train = train_ids[::step][:MAX_TRAIN_EVAL_VIEWS]
    background = torch.zeros(3)

    def score(i: int):
        pred = render(gaussians, views.cameras[i:i + 1], background=background, backend=config.backend).rgb
        pred = pred.clamp(0, 1)
        gt = views.images[i:i + 1].to(pred)
        fitted = exposure_fitted(pred, gt)  # the render with its affine colour transform fitted to the photo
        return pred[0], float(psnr(pred, gt)[0]), float(ssim(pred, gt)[0]), float(psnr(fitted, gt)[0])

    held_out, train = [], []
    bar = progress_bar(total=len(test_ids) + len(scored_train), desc="evaluate", enabled=progress)
    with atomic_directory(run_dir / "evaluate") as tmp:
        for i in test_ids:
            pred, p, s, pf = score(i)
            stem = Path(views.names[i]).stem
            write_image(tmp / f"{stem}_render.png", pred)
            write_image(tmp / f"{stem}_photo.png", views.images[i])
            held_out.append({"name": views.names[i], "index": i, "psnr": p, "ssim": s, "psnr_exposure_fitted": pf,
                             "render": f"{stem}_render.png", "photo": f"{stem}_photo.png"})
            bar.update(1)
        for i in scored_train:
            _, p, s, _ = score(i)
            train.append({"name": views.names[i], "index": i, "psnr": p, "ssim": s})
            bar.update(1)
        bar.close()
        def mean(rows: list[dict], key: str) -> float | None:
            return sum(r[key] for r in rows) / len(rows) if rows else None

        metrics = {"held_out": held_out, "train": train, "psnr": mean(held_out, "psnr"),
                   "ssim": mean(held_out, "ssim"), "train_psnr": mean(train, "psnr"), "train_ssim": mean(train, "ssim"),
                   "test_every": config.test_every, "image_size": [views.height, views.width],
                   "psnr_exposure_fitted": mean(held_out, "psnr_exposure_fitted"),
                   "exposure": "the held-out PSNR compares each render, as it is, with its photo; with exposure "
                               "fitted, each render's affine colour transform (12 numbers) is first fitted to its "
                               "photo by least squares"}
        with atomic_open(tmp / "metrics.json", "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=1)
        info = {k: metrics[k] for k in ("psnr", "ssim", "train_psnr", "train_ssim", "psnr_exposure_fitted")}
        info["held_out"] = len(held_out)
        write_marker(tmp, "evaluate", time.perf_counter() - t0, info)
    return info


@torch.no_grad()
def orbit(run_dir: Path, config: RunConfig, progress: bool) -> dict:
    """``orbit_frames`` renders on the orbit of the training cameras: a video (with imageio-ffmpeg) and stills."""
    from manyview.io.image_writers import write_image
    from manyview.io.video import open_video
    from manyview.progress import progress as progress_bar
    from manyview.splat import read_ply, render
    from manyview.splat.data import load_training_views

    t0 = time.perf_counter()
    views, _ = load_training_views(run_dir / "poses", config.max_width)
    gaussians = read_ply(run_dir / "splat" / "splat.ply")
    cams = views.cameras.orbit(config.orbit_frames).to(torch.float32)
    keep = set(torch.linspace(0, len(cams) - 1, min(STILLS, len(cams))).round().long().tolist())
    stills = []
    background = torch.zeros(3)
    with atomic_directory(run_dir / "orbit") as tmp:
        with open_video(tmp / "video.mp4", config.fps) if len(cams) >= 2 else nullcontext() as video:
            for i in progress_bar(range(len(cams)), desc="orbit", enabled=progress):
                rgb = render(gaussians, cams[i:i + 1], background=background, backend=config.backend).rgb[0]
                rgb = rgb.clamp(0, 1)
                if i in keep:
                    write_image(tmp / f"still_{i:03d}.png", rgb)
                    stills.append(f"still_{i:03d}.png")
                if video is not None:
                    video.add(rgb)
        info = {"frames": len(cams), "stills": stills, "video": "video.mp4" if video is not None else None,
                "fps": config.fps}
        write_marker(tmp, "orbit", time.perf_counter() - t0, info)
    return info


__all__ = ["evaluate", "load_fast3r", "orbit", "poses", "splat"]
