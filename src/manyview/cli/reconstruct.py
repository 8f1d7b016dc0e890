"""``manyview reconstruct``: images -> cameras and a point cloud, written as a dataset folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from manyview.errors import ManyviewError, require
from manyview.recon.global_alignment import GlobalAlignmentConfig


@dataclass
class _GlobalAlignment(GlobalAlignmentConfig):
    """The library's global-alignment settings, its iteration count under the option name it always had."""

    iterations: Annotated[int, tyro.conf.arg(name="ga-iterations", prefix_name=False,
                                             help="Pairwise: global alignment iterations.")] = \
        GlobalAlignmentConfig.iterations


@dataclass
class Reconstruct:
    """Reconstruct cameras and a coloured point cloud from unposed images, with Fast3R (one forward pass), the
    pairwise DUSt3R-style baseline (all pairs + global alignment), COLMAP's incremental SfM (--model colmap), or
    Fast3R refined by bundle adjustment (--model fast3r --refine).

    Writes OUT/: images/ (the images as the network saw them; for colmap and --refine the photos undistorted),
    sparse/0/ (COLMAP binary model, PINHOLE cameras), transforms.json, points.ply, scene.glb (points and camera
    frusta), summary.json (views, times, model; for colmap and --refine also the photos not registered, the
    camera model and its estimated parameters) and manyview.json. The folder is built under a temporary name and
    renamed at the end: an interrupted or failed run leaves no partial output. Fast3R's cameras are in the first
    image's camera frame, at the network's scale; COLMAP's in its own frame and scale.

    Under ``torchrun --nproc-per-node K`` (gloo on CPU, NCCL on GPU, one GPU per process) Fast3R's forward pass is
    split across the K processes by tensor parallelism (attention heads and MLPs of every transformer block, the
    DPT heads by views; K must divide the fusion transformer's head count); the outputs equal the one-process
    pass, and only rank 0 writes OUT. The pairwise model, colmap and --refine run in one process.
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
    model: Literal["auto", "fast3r", "pairwise", "colmap"] = "auto"
    """Network type ('auto' reads it from the checkpoint's config.json), or colmap: incremental SfM (SIFT,
    exhaustive matching, mapping) through pycolmap, no network."""
    refine: bool = False
    """Fast3R: refine its cameras by bundle adjustment on SIFT tracks of the full photos (pycolmap), then
    undistort the photos."""
    camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "RADIAL", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """colmap and --refine: the lens model estimated; the photos are then undistorted to PINHOLE cameras."""
    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    """colmap: match every pair of photos, or each with its neighbours in order (videos)."""
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
    """Fast3R: seed of the random image-index draw (default: indices in input order); colmap and --refine: the
    seed of COLMAP's RANSAC (default 0)."""
    graph: str = "complete"
    """Pairwise: pair graph (complete, swin-K, logwin-K, oneref-R)."""
    batch_size: int = 8
    """Pairwise: pairs per network batch."""
    ga: Annotated[_GlobalAlignment, tyro.conf.arg(name="ga", help="Pairwise: global alignment (DUSt3R's optimiser).")
                  ] = field(default_factory=_GlobalAlignment)

    def __post_init__(self):
        if self.max_views is not None:
            require(self.max_views >= 1, "--max-views", "at least 1", self.max_views)
        if self.size is not None:
            require(self.size >= 16 and self.size % 16 == 0, "--size", "a positive multiple of 16", self.size)
        require(0 <= self.min_conf_percentile <= 100, "--min-conf-percentile", "between 0 and 100",
                self.min_conf_percentile)
        require(self.max_points >= 1, "--max-points", "at least 1", self.max_points)
        require(self.ga.iterations >= 0, "--ga-iterations", "at least 0", self.ga.iterations)
        require(self.batch_size >= 1, "--batch-size", "at least 1", self.batch_size)

    def interrupted(self) -> str:
        from manyview.cli.common import left_as_it_was

        return left_as_it_was(self.out)

    def run(self) -> None:
        from manyview.cli.common import image_files, launcher_world_size
        from manyview.io.atomic import check_output_folder
        from manyview.io.dataset import MARKER
        from manyview.recon.reconstruct import load_inputs, reconstruct, reconstruct_pairwise, select_views

        t0 = time.perf_counter()
        out = Path(self.out)
        if not self.images and not self.sample:
            raise ManyviewError("no images given: pass a folder of images or image files (or --sample)")
        if self.images and self.sample:
            raise ManyviewError("give IMAGES or --sample, not both")
        check_output_folder(out, MARKER)
        files = [] if self.sample else image_files(self.images, "IMAGES")
        processes = launcher_world_size()
        if processes > 1 and (self.model == "colmap" or self.refine):
            raise ManyviewError(f"WORLD_SIZE={processes}: only Fast3R's network pass splits across processes; "
                                f"run {'--model colmap' if self.model == 'colmap' else '--refine'} in one process")
        if self.model == "colmap" or self.refine:
            return self._run_posed_photos(files, t0)
        net, kind, weights = self._load_model()
        self._check_options_apply(kind)
        self._check_colmap_only_options()
        if processes > 1 and kind != "fast3r":
            raise ManyviewError(f"WORLD_SIZE={processes}: only Fast3R's network pass splits across processes; run "
                                "the pairwise model in one process")
        truth = None
        if self.sample:
            truth = self._sample_views(self._size(net, kind))
            chosen = select_views(len(truth), self.max_views)
            truth = truth[chosen]
            images, names = truth.images, list(truth.names)
        else:
            files = [files[i] for i in select_views(len(files), self.max_views)]
            _check_image_sizes(files, net.patch_size)
            # Every image is decoded before anything runs: a corrupt file fails here, naming it, nothing written.
            images, names = load_inputs(files, size=self._size(net, kind), patch_size=net.patch_size)
        if kind == "fast3r" and processes > 1:
            return self._run_tensor_parallel(net, images, names, truth, weights, t0)
        if kind == "fast3r":
            rec = reconstruct(images, net, device=self.device, dtype=self.dtype, image_index_seed=self.seed,
                              min_conf_percentile=self.min_conf_percentile)
        else:
            rec = reconstruct_pairwise(images, net, graph=self.graph,
                                       ga=self.ga,
                                       batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                                       min_conf_percentile=self.min_conf_percentile)
        self._write(rec, names, truth, kind, weights, t0)

    def _run_tensor_parallel(self, net, images, names, truth, weights, t0: float) -> None:
        """Fast3R's pass split across the processes torchrun started: every rank runs it (the collectives need
        them all), rank 0 alone writes OUT."""
        from manyview.models.fast3r_parallel import fast3r_mesh, parallelize_fast3r
        from manyview.recon.reconstruct import reconstruct
        from manyview.train.config import ParallelConfig
        from manyview.train.distributed import setup, teardown

        # the trainer's seam: reads torchrun's environment, picks cuda:LOCAL_RANK or the CPU, joins the group
        env = setup(ParallelConfig(mode="ddp"), self.device)
        try:
            net.to(env.device)
            plan = parallelize_fast3r(net, fast3r_mesh(env.device.type))
            rec = reconstruct(images, net, device=env.device, dtype=self.dtype, image_index_seed=self.seed,
                              min_conf_percentile=self.min_conf_percentile, progress=env.is_main)
            if env.is_main:
                self._write(rec, names, truth, "fast3r", weights, t0, tensor_parallel=plan.as_dict())
        finally:
            teardown(env)

    def _write(self, rec, names, truth, kind: str, weights, t0: float, tensor_parallel: dict | None = None) -> None:
        from manyview.recon.posed_photos import write_reconstruction
        from manyview.scene import Views

        out = Path(self.out)
        rec_names = names
        points = rec.points.subsample(self.max_points)
        info = rec.info
        summary = {
            "views": len(rec), "names": rec_names, "image_size": info["image_size"], "model": kind,
            "weights": weights, "parameters": info["parameters"], "device": info["device"], "dtype": info["dtype"],
            "time_s": info["timings_s"], "memory": info["peak_memory"], "mean_confidence": info["mean_confidence"],
            "points_kept": info["num_points"],
            "min_conf_percentile": self.min_conf_percentile,
        }
        for key in ("pnp_success", "focal_fallback", "image_ids", "graph", "num_pairs", "ga_iterations", "final_loss"):
            if key in info:
                summary[key] = info[key]
        if tensor_parallel is not None:  # memory and times above are rank 0's
            summary["tensor_parallel"] = tensor_parallel
        if truth is not None:
            from manyview.recon.evaluate import pose_scores

            scores = pose_scores(rec.cameras, truth.cameras)
            summary["ground_truth"] = {k: round(scores[k], 2) for k in ("RRA@15", "RTA@15", "RRA@5", "RTA@5", "mAA@30")}
        summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
        write_reconstruction(out, Views(images=rec.images, cameras=rec.cameras, names=rec_names), points, summary)
        h, w = info["image_size"]
        split = f" on {tensor_parallel['world_size']} processes" if tensor_parallel else ""
        print(f"reconstructed {len(rec)} views ({h}x{w}) with {kind}{split} in {summary['wall_time_s']:.1f} s "
              f"(mean confidence {info['mean_confidence']:.3g}, {len(points)} points); wrote {out}")
        if truth is not None:
            gt = summary["ground_truth"]
            print(f"cameras against the sample's ground truth: RRA@15 {gt['RRA@15']:.1f} %, RTA@15 {gt['RTA@15']:.1f} %, "
                  f"mAA@30 {gt['mAA@30']:.1f}")

    def _run_posed_photos(self, files: list[Path], t0: float) -> None:
        """colmap, or Fast3R + bundle adjustment: undistorted photos with PINHOLE cameras, photos left out named."""
        from manyview.recon.posed_photos import colmap_poses, fast3r_refined_poses, write_reconstruction
        from manyview.recon.reconstruct import select_views

        self._check_posed_options()
        truth = None
        if self.sample:
            from manyview.synth import sample_scene

            truth = sample_scene()[1]
            photos = truth = truth[select_views(len(truth), self.max_views)]
        else:
            photos = [files[i] for i in select_views(len(files), self.max_views)]
        if self.model == "colmap":
            posed = colmap_poses(photos, camera_model=self.camera_model, matcher=self.matcher, seed=self.seed or 0)
            weights = None
        else:
            net, kind, weights = self._load_model()
            if kind != "fast3r":
                raise ManyviewError("--refine refines Fast3R's cameras; these weights are a pairwise model")
            posed = fast3r_refined_poses(photos, net, size=self._size(net, kind), camera_model=self.camera_model,
                                         device=self.device, dtype=self.dtype, seed=self.seed)
        points = posed.points.subsample(self.max_points)
        summary = {**posed.summary, "weights": weights}
        if truth is not None:
            from manyview.recon.evaluate import pose_scores

            index = [list(truth.names).index(name) for name in posed.views.names]
            scores = pose_scores(posed.views.cameras, truth.cameras[index])
            summary["ground_truth"] = {k: round(scores[k], 2) for k in ("RRA@15", "RTA@15", "RRA@5", "RTA@5",
                                                                        "mAA@30")}
        summary["wall_time_s"] = round(time.perf_counter() - t0, 3)
        write_reconstruction(self.out, posed.views, points, summary)
        what = "COLMAP" if self.model == "colmap" else "Fast3R + bundle adjustment"
        h, w = summary["image_size"]
        print(f"registered {summary['registered']} of {summary['photos']} photos with {what} ({self.camera_model}, "
              f"{summary['mean_reprojection_error_px']:.2f} px mean reprojection error, {len(points)} points) in "
              f"{summary['wall_time_s']:.1f} s; wrote {self.out} (undistorted, {w}x{h})")
        if summary["unregistered"]:
            print(f"not registered ({len(summary['unregistered'])}): {', '.join(summary['unregistered'])}")
        if truth is not None:
            gt = summary["ground_truth"]
            print(f"cameras against the sample's ground truth: RRA@5 {gt['RRA@5']:.1f} %, RTA@5 {gt['RTA@5']:.1f} %, "
                  f"mAA@30 {gt['mAA@30']:.1f}")

    def _check_posed_options(self) -> None:
        """Options that would silently do nothing with colmap or --refine: refused, naming the model."""
        defaults = Reconstruct()
        network = [("--graph", self.graph == defaults.graph), ("--batch-size", self.batch_size == defaults.batch_size),
                   ("--ga-iterations / --ga.*", self.ga == defaults.ga),
                   ("--min-conf-percentile", self.min_conf_percentile == defaults.min_conf_percentile)]
        if self.model == "colmap":
            network += [("--weights", self.weights is None), ("--size", self.size is None),
                        ("--device", self.device == defaults.device), ("--dtype", self.dtype == defaults.dtype),
                        ("--refine", not self.refine)]
            what = "of the networks; --model colmap uses none"
        else:
            if self.model == "pairwise":
                raise ManyviewError("--refine refines Fast3R's cameras; it does not apply to --model pairwise")
            network.append(("--matcher", self.matcher == defaults.matcher))
            what = "that --refine does not use (it matches every pair and triangulates its own points)"
        unused = [option for option, same in network if not same]
        if unused:
            raise ManyviewError(f"{', '.join(unused)} {'is an option' if len(unused) == 1 else 'are options'} {what}")

    def _check_colmap_only_options(self) -> None:
        defaults = Reconstruct()
        unused = [option for option, same in (("--camera-model", self.camera_model == defaults.camera_model),
                                              ("--matcher", self.matcher == defaults.matcher)) if not same]
        if unused:
            raise ManyviewError(f"{', '.join(unused)} {'is an option' if len(unused) == 1 else 'are options'} of "
                                "--model colmap (and --camera-model of --refine); this run uses a network alone")

    @staticmethod
    def _sample_views(size: int):
        """The embedded sample scene, resized and centre-cropped to a size x size square like loaded photos."""
        from manyview.scene import resize_views
        from manyview.synth import sample_scene

        _, views = sample_scene()
        return resize_views(views, size, size)

    def _size(self, net, kind: str) -> int:
        from manyview.models.fast3r import training_image_size

        if self.size is not None:
            return self.size
        return training_image_size(net.config) if kind == "fast3r" else 512

    def _check_options_apply(self, kind: str) -> None:
        """An option of the other model would silently do nothing: refuse it, saying which model is in use."""
        defaults = Reconstruct()
        if kind == "fast3r":
            unused = [option for option, same in (("--graph", self.graph == defaults.graph),
                                                  ("--batch-size", self.batch_size == defaults.batch_size),
                                                  ("--ga-iterations / --ga.*", self.ga == defaults.ga)) if not same]
        else:
            unused = ["--seed"] if self.seed is not None else []
        if unused:
            other, this = ("pairwise", "Fast3R") if kind == "fast3r" else ("Fast3R", "pairwise")
            what = "is an option" if len(unused) == 1 else "are options"
            raise ManyviewError(f"{', '.join(unused)} {what} of the {other} model; these weights are {this}")

    def _load_model(self):
        """-> (network, 'fast3r' | 'pairwise', weights description)."""
        from manyview.assets import bundled_model_dir
        from manyview.hub import CONFIG_NAME, open_checkpoint
        from manyview.models.fast3r import Fast3R
        from manyview.models.pairwise import PairwiseNet

        if self.weights is None:
            bundled = bundled_model_dir("fast3r")
            if self.model == "pairwise" or bundled is None:
                what = ("no bundled pairwise model" if self.model == "pairwise"
                        else "no bundled model in this installation")
                raise ManyviewError(f"{what}; pass --weights NAME_OR_PATH (a folder with config.json and "
                                    "model.safetensors, or a Hugging Face repo id)")
            return Fast3R.from_pretrained(bundled), "fast3r", "bundled:fast3r_bundled"
        # the weights are read first: a file that is no usable checkpoint (a pickle carrying code, a damaged
        # file) is named as such, whatever else is missing
        checkpoint = open_checkpoint(self.weights)
        kind = self.model
        if kind == "auto":
            if checkpoint.config is None:
                raise ManyviewError(f"no {CONFIG_NAME} beside these weights to tell the model type; pass --model "
                                    "fast3r or pairwise", checkpoint.source)
            kind = "fast3r" if "encoder_args" in checkpoint.config else "pairwise"
        cls = Fast3R if kind == "fast3r" else PairwiseNet
        return cls.from_checkpoint(checkpoint), kind, str(self.weights)


def _check_image_sizes(files: list[Path], min_side: int) -> None:
    """Refuse images smaller than one network patch: scaled up to the input size they hold no structure, and the
    network would still return a dense (meaningless) point cloud."""
    from manyview.io.images import read_image_size

    for file in files:
        h, w = read_image_size(file)
        if min(h, w) < min_side:
            raise ManyviewError(f"image is {w}x{h} pixels; reconstruct needs at least {min_side} on each side (one "
                                "network patch)", file)
