"""``manyview splat``: train Gaussians on a posed dataset (3DGS recipe), with checkpoints and held-out evaluation.

    manyview splat scene/ --out runs/scene_splat --iterations 7000
    manyview splat scene/ --out runs/scene_splat --iterations 30000 --resume
    manyview splat photos_posed/ --out runs/photos --exposure     # photos of differing exposure
    manyview splat scene/ --out runs/scene_splat --device cpu     # on the CPU even where a GPU is
    torchrun --standalone --nproc-per-node 2 -m manyview splat scene/ --out runs/scene_splat --batch-size 4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from manyview.errors import require
from manyview.splat.trainer import SplatTrainConfig


@dataclass
class Splat:
    """Train a Gaussian splat on DATASET: a COLMAP model with images, a transforms.json dataset, a manyview dataset
    (``manyview synth``) or a reconstruction folder. Every 8th view (i % 8 == 0) is held out for evaluation.

    Writes OUT/splat.ply (3DGS PLY), OUT/eval.json (held-out PSNR/SSIM/LPIPS, and PSNR/SSIM with each held-out
    render's colour transform fitted to its photo), OUT/transforms.json (the cameras, for ``manyview render
    --orbit``), OUT/views.json (per photo: the learned colour transform and refined camera, with --exposure /
    --pose-refine) and OUT/checkpoints/ (the latest checkpoint; --resume continues from it). OUT must be new,
    empty or an earlier run's. Ctrl-C keeps the checkpoints written so far.

    For photos: --exposure learns a colour transform per training photo (splat.ply holds their mean, which
    held-out and novel views get), --pose-refine corrects the training cameras, --far-points N adds a shell of points for distant
    background (with --densify.prune-scale-by-distance, so that it is not pruned for its world size).

    --device: auto trains on a CUDA GPU with gsplat's rasteriser when PyTorch sees a GPU and gsplat is installed
    (pip install 'manyview[gsplat]'), else on the CPU with the numba rasteriser; cuda without gsplat uses the
    reference renderer on the GPU (dense: small scenes only). Checkpoints resume on either device.

    --batch-size B renders B views per step (loss averaged over them). Under ``torchrun --nproc-per-node K -m
    manyview splat ...`` the Gaussians are sharded over the K processes (gloo on the CPU; with --device cuda NCCL,
    each process on the GPU of its LOCAL_RANK, with the reference renderer) and each renders B / K of the batch's
    views: the same Gaussians as one process with the same B, to float rounding. Checkpoints are
    then torch.distributed.checkpoint folders, resumable with any K (--resume without torchrun resumes them in
    one process); splat.ply is streamed shard by shard. When a process dies or stops answering (--dist-timeout),
    the others stop with one error naming it and the checkpoint kept; --resume continues from that checkpoint.
    """

    dataset: tyro.conf.Positional[Path]
    """Posed dataset folder (or transforms.json)."""
    out: Path
    """Output folder (new, empty, or an earlier splat run's)."""
    resume: bool = False
    """Continue from the latest checkpoint in OUT (start fresh when there is none)."""
    max_width: int = 480
    """Images wider than this are downscaled (aspect kept; cameras follow). 0 keeps the full size."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto = a CUDA GPU when PyTorch sees one and gsplat is installed (one process), else the CPU.
    Under torchrun, cuda gives each process the GPU of its LOCAL_RANK and NCCL between them."""
    dist_timeout: float = 120.0
    """Under torchrun: seconds a process waits for the others in one exchange before it stops the run, naming the
    process that did not answer (from the first step on; at the start, while every process reads the dataset,
    torch's default of 30 min applies)."""
    # the library's config, its fields as top-level options (--iterations, --sh-degree, ...); the command turns
    # the schedule scaling on
    config: Annotated[SplatTrainConfig, tyro.conf.arg(name="")] = field(
        default_factory=lambda: SplatTrainConfig(scale_schedule=True))

    def __post_init__(self):
        require(self.max_width >= 0, "--max-width", "at least 0 (0 keeps the full size)", self.max_width)
        require(self.dist_timeout > 0, "--dist-timeout", "a positive number of seconds", self.dist_timeout)

    def interrupted(self) -> str:
        return (f"the checkpoints written so far are kept in {self.out / 'checkpoints'} (continue with --resume); "
                "splat.ply and eval.json are written at the end")

    def run(self) -> None:
        from manyview.cli.common import launcher_world_size
        from manyview.splat.data import load_training_views
        from manyview.splat.trainer import SplatTrainer, check_run_folder, training_device

        check_run_folder(self.out)  # before the dataset is read: a refused folder costs nothing
        sharded = launcher_world_size() > 1 or (self.resume and _latest_checkpoint_is_sharded(self.out))
        # --device cuda without a GPU: one line, before the dataset is read or a process group joined
        device = training_device(self.device, self.config.backend, sharded=sharded)
        if sharded:
            return self._run_sharded(device)
        views, points = load_training_views(self.dataset, self.max_width)
        trainer = SplatTrainer(views, self.out, self.config, points=points, device=device)
        self._report_start(trainer, views, points, f" on {device}" if device.type != "cpu" else "")
        self._report_end(trainer, trainer.train(resume=self.resume))

    def _run_sharded(self, device) -> None:
        """Under ``torchrun --nproc-per-node K``: the Gaussians sharded over the K processes (gloo on the CPU; on
        CUDA, NCCL with each process on the GPU of its LOCAL_RANK); every rank loads the dataset, rank 0 alone
        prints and writes the JSON files, all write the PLY together. Also a run of one process resuming a
        checkpoint that processes under torchrun wrote."""
        from manyview.errors import ManyviewError
        from manyview.splat.data import load_training_views
        from manyview.splat.rank_faults import Terminated, sigterm_raises
        from manyview.splat.sharded_trainer import ShardedSplatTrainer
        from manyview.train.config import ParallelConfig
        from manyview.train.distributed import setup, teardown

        env = setup(ParallelConfig(mode="ddp"), device.type)  # backend: nccl on cuda, gloo on the CPU
        try:
            views, points = load_training_views(self.dataset, self.max_width)
            # torchrun's SIGTERM (another process failed) becomes one line, temporaries removed; installed after
            # the dataset is read, because importing pycolmap installs glog's handler of SIGTERM over ours
            with sigterm_raises():
                trainer = ShardedSplatTrainer(views, self.out, self.config, points=points,
                                              collective_timeout=self.dist_timeout)
                if env.is_main:
                    where = f" on {env.world_size} process{'es' if env.world_size > 1 else ''}"
                    self._report_start(trainer, views, points,
                                       where + (" (NCCL, one GPU each)" if env.device.type == "cuda" else ""))
                result = trainer.train(resume=self.resume, show_progress=env.is_main)
                if env.is_main:
                    self._report_end(trainer, result)
        except Terminated:  # between two steps of the trainer's own handling (its start, or the last message)
            raise ManyviewError("stopped by SIGTERM (torchrun sends it to every process when one fails or is "
                                "stopped)", self.out) from None
        finally:
            teardown(env)

    def _report_start(self, trainer, views, points, where: str = "") -> None:
        init = "random" if points is None else f"{len(points.xyz)} dataset points"
        print(f"training {len(trainer.train_ids)} views ({views.height}x{views.width}), {len(trainer.test_ids)} "
              f"held out, from {init}{where}")

    def _report_end(self, trainer, result: dict) -> None:
        if trainer.resumed_from is not None:
            print(f"resumed from the checkpoint at step {trainer.resumed_from}")
        scores = ", ".join(f"{k.upper()} {result[k]:.4f}" for k in ("psnr", "ssim", "lpips")
                           if result.get(k) is not None)
        if result.get("psnr_exposure_fitted") is not None:
            scores += f" (PSNR {result['psnr_exposure_fitted']:.4f} with exposure fitted to each held-out photo)"
        print(f"wrote {self.out / 'splat.ply'} ({result['gaussians']} Gaussians, {result['step']} steps, "
              f"{result['train_seconds']:.0f} s){'; held-out ' + scores if scores else ''}")


def _latest_checkpoint_is_sharded(out: Path) -> bool:
    """Whether OUT's latest checkpoint was written under torchrun (torch.distributed.checkpoint)."""
    from manyview.splat.trainer import CHECKPOINT_DIR, SHARDED_STATE_DIR

    found = sorted((out / CHECKPOINT_DIR).glob("step_[0-9]*")) if (out / CHECKPOINT_DIR).is_dir() else []
    return bool(found) and (found[-1] / SHARDED_STATE_DIR).is_dir()
