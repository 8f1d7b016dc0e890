"""``manyview reconstruct``: images -> cameras and a point cloud, written as a dataset folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import tyro

from manyview.errors import ManyviewError


def bundled_model_dir() -> Path:
    """Where the package keeps its bundled Fast3R (config.json + model.safetensors), when it ships one."""
    return Path(str(resources.files("manyview").joinpath("assets", "fast3r_bundled")))


@dataclass
class Reconstruct:
    """Reconstruct cameras and a coloured point cloud from unposed images, with Fast3R (one forward pass) or the
    pairwise DUSt3R-style baseline (all pairs + global alignment).

    Writes OUT/: images/ (the images as the network saw them), sparse/0/ (COLMAP binary model), transforms.json,
    points.ply, scene.glb (points and camera frusta), summary.json (views, times, memory, mean confidence, model,
    weights) and manyview.json. The folder is built under a temporary name and renamed at the end: an interrupted
    or failed run leaves no partial output. Cameras are in the first image's camera frame, at the network's scale.
    """

    images: tyro.conf.Positional[list[Path]] = field(default_factory=list)
    """A folder of images, or image files (or --sample)."""
    out: Path = Path("out/reconstruction")
    """Output folder (replaced when it holds an earlier manyview output; any other non-empty folder is refused)."""
    weights: str | None = None
    """Checkpoint: a folder with config.json + model.safetensors, a weights file with config.json beside it, or a
    Hugging Face repo id. Default: the model bundled with manyview, when this installation has one."""
    sample: bool = False
    """Reconstruct the embedded sample scene (6 synthetic views of a quarter orbit) instead of IMAGES, and score
    the cameras against its exact ground truth (RRA / RTA / mAA in summary.json)."""
    model: Literal["auto", "fast3r", "pairwise"] = "auto"
    """Network type; 'auto' reads it from the checkpoint's config.json."""
    max_views: int | None = None
    """Use at most this many evenly spaced images."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Autocast dtype of the network (bfloat16 / float16 are for GPUs)."""
    size: int | None = None
    """Image size in pixels, a multiple of 16: the long side (aspect ratio of the first image kept); 224 or less
    scales the short side to it and crops a centred square, as DUSt3R's 224 models expect. Default: the size the
    weights were trained at (config.json encoder_args.img_size; 512 for the released Fast3R, 112 for the bundled
    model); 512 for the pairwise baseline."""
    min_conf_percentile: float = 10.0
    """Per view, keep the points whose confidence is at least this percentile."""
    max_points: int = 500_000
    """At most this many points in points.ply, scene.glb and the COLMAP model (a deterministic subsample)."""
    seed: int | None = None
    """Fast3R: seed of the random image-index draw (default: indices in input order)."""
    graph: str = "complete"
    """Pairwise: pair graph (complete, swin-K, logwin-K, oneref-R)."""
    ga_iterations: int = 300
    """Pairwise: global alignment iterations."""
    batch_size: int = 8
    """Pairwise: pairs per network batch."""

    def run(self) -> None:
        from manyview.io.atomic import atomic_directory, atomic_open
        from manyview.io.dataset import MARKER, write_dataset
        from manyview.io.gltf import write_glb
        from manyview.io.images import list_images
        from manyview.recon import GlobalAlignmentConfig
        from manyview.recon.reconstruct import load_inputs, reconstruct, reconstruct_pairwise, select_views
        from manyview.scene import Views

        t0 = time.perf_counter()
        out = Path(self.out)
        if not self.images and not self.sample:
            raise ManyviewError("no images given: pass a folder of images or image files (or --sample)")
        if self.images and self.sample:
            raise ManyviewError("give IMAGES or --sample, not both")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
            raise ManyviewError("refusing to replace: not an empty folder or an earlier manyview output", out)
        if self.max_points < 1:
            raise ManyviewError(f"--max-points must be >= 1, got {self.max_points}")
        net, kind, weights = self._load_model()
        truth = None
        if self.sample:
            truth = self._sample_views(self._size(net, kind))
            chosen = select_views(len(truth), self.max_views)
            truth = truth[chosen]
            images, names = truth.images, list(truth.names)
        else:
            files = list_images(self.images[0]) if len(self.images) == 1 and self.images[0].is_dir() else self.images
            files = [files[i] for i in select_views(len(files), self.max_views)]
            # Every image is decoded before anything runs: a corrupt file fails here, naming it, nothing written.
            images, names = load_inputs(files, size=self._size(net, kind), patch_size=net.patch_size)
        if kind == "fast3r":
            rec = reconstruct(images, net, device=self.device, dtype=self.dtype, image_index_seed=self.seed,
                              min_conf_percentile=self.min_conf_percentile)
        else:
            rec = reconstruct_pairwise(images, net, graph=self.graph,
                                       ga=GlobalAlignmentConfig(iterations=self.ga_iterations),
                                       batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                                       min_conf_percentile=self.min_conf_percentile)
        rec_names = names
        points = rec.points.subsample(self.max_points)
        info = rec.info
        summary = {
            "views": len(rec), "names": rec_names, "image_size": info["image_size"], "model": kind,
            "weights": weights, "parameters": info["parameters"], "device": info["device"], "dtype": info["dtype"],
            "time_s": info["timings_s"], "memory": info["peak_memory"], "mean_confidence": info["mean_confidence"],
            "points_kept": info["num_points"], "points_written": len(points),
            "min_conf_percentile": self.min_conf_percentile,
        }
        for key in ("pnp_success", "focal_fallback", "image_ids", "graph", "num_pairs", "ga_iterations", "final_loss"):
            if key in info:
                summary[key] = info[key]
        if truth is not None:
            from manyview.recon.evaluate import pose_scores

            scores = pose_scores(rec.cameras, truth.cameras)
            summary["ground_truth"] = {k: round(scores[k], 2) for k in ("RRA@15", "RTA@15", "RRA@5", "RTA@5", "mAA@30")}
        with atomic_directory(out) as tmp:
            write_dataset(tmp, Views(images=rec.images, cameras=rec.cameras, names=rec_names), points=points)
            write_glb(tmp / "scene.glb", points, rec.cameras)
            summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
            with atomic_open(tmp / "summary.json", "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
                fh.write("\n")
        h, w = info["image_size"]
        print(f"reconstructed {len(rec)} views ({h}x{w}) with {kind} in {summary['wall_time_s']:.1f} s "
              f"(mean confidence {info['mean_confidence']:.3g}, {len(points)} points); wrote {out}")
        if truth is not None:
            gt = summary["ground_truth"]
            print(f"cameras against the sample's ground truth: RRA@15 {gt['RRA@15']:.1f} %, RTA@15 {gt['RTA@15']:.1f} %, "
                  f"mAA@30 {gt['mAA@30']:.1f}")

    @staticmethod
    def _sample_views(size: int):
        """The embedded sample scene, resized and centre-cropped to a size x size square like loaded photos."""
        from manyview.synth import sample_scene
        from manyview.train.data import fit_views

        _, views = sample_scene()
        return fit_views(views, size, size)

    def _size(self, net, kind: str) -> int:
        from manyview.models.fast3r import training_image_size

        if self.size is not None:
            return self.size
        return training_image_size(net.config) if kind == "fast3r" else 512

    def _load_model(self):
        """-> (network, 'fast3r' | 'pairwise', weights description)."""
        from manyview.hub import CONFIG_NAME, read_config, resolve
        from manyview.models.fast3r import Fast3R
        from manyview.models.pairwise import PairwiseNet

        if self.weights is None:
            bundled = bundled_model_dir()
            if self.model == "pairwise" or not (bundled / CONFIG_NAME).is_file():
                what = ("no bundled pairwise model" if self.model == "pairwise"
                        else "no bundled model in this installation")
                raise ManyviewError(f"{what}; pass --weights NAME_OR_PATH (a folder with config.json and "
                                    "model.safetensors, or a Hugging Face repo id)")
            return Fast3R.from_pretrained(bundled), "fast3r", "bundled:fast3r_bundled"
        path = resolve(self.weights)
        kind = self.model
        if kind == "auto":
            config_path = (path if path.is_dir() else path.parent) / CONFIG_NAME
            if not config_path.is_file():
                raise ManyviewError(f"no {CONFIG_NAME} to tell the model type; pass --model fast3r or pairwise",
                                    config_path)
            kind = "fast3r" if "encoder_args" in read_config(config_path) else "pairwise"
        cls = Fast3R if kind == "fast3r" else PairwiseNet
        return cls.from_pretrained(path), kind, str(self.weights)
