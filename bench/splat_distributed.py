"""Sharded Gaussian splatting: memory per rank, time per training step and bytes exchanged, K = 1, 2, ... ranks at
a fixed total number of Gaussians (gloo on the CPU, one process per rank, spawned here).

Scene: 3DGS's random initialisation (``random_in_box``, SH degree 3, opacity 0.5) of ``--gaussians`` Gaussians,
``--cameras`` cameras on a circle around the box at ``--width`` x ``--height``. Every rank builds the same scene
from the seed and keeps its shard (``ShardedGaussians.distribute``), then frees the whole. A step is
``render`` (forward), a linear loss on this rank's images (fixed random weights), ``backward`` and an Adam step
on the DTensor parameters; the loss summed over the ranks is recorded, so that the runs can be checked against
each other (they render the same images).

Per rank: the bytes of its Gaussian state as tensors (parameters, gradients and the two Adam moments: what must
fall as 1/K), the peak resident-set increase during the steps over the level before them (``MemoryMeter``; it also
holds the render's per-step buffers), the median step time (wall, between barriers), and the bytes this rank sent
and received per step (the splat exchange, forward and backward; payload only). Each rank runs one torch and one
numba thread, so K ranks use K cores.

    python bench/splat_distributed.py                      # 200k Gaussians, 4 cameras 640x360, K = 1, 2
    python bench/splat_distributed.py --gaussians 20000 --steps 2 --out /tmp/quick.json   # a smoke run

``--mode train`` measures the trainer itself (``ShardedSplatTrainer``, the code ``torchrun -m manyview splat`` runs):
a synthetic object scene (``manyview.synth.generate``, ``--views`` views at ``--width`` x ``--height``), initial
Gaussians from its points (``--gaussians`` of them), ``--steps`` steps of ``--batch-size`` views with densification
on its default schedule scaled to the run (as ``manyview splat`` does), per rank: the Gaussian state (parameters, their
gradients, Adam moments) after the last step, the peak resident-set increase during the steps, the median step time
and the losses (the runs must agree: K ranks train the Gaussians of one):

    python bench/splat_distributed.py --mode train --gaussians 100000 --views 16 --width 256 --height 192 \
        --batch-size 4 --steps 20 --ranks 1 2       # -> bench/results/splat_distributed_train.json

``--mode scale`` is the table "memory per rank and time per step for K = 1, 2, 4 at a fixed total": the trainer
(``ShardedSplatTrainer``) on a synthetic object scene (``--views`` views at ``--width`` x ``--height``), with a fixed
total of ``--gaussians`` Gaussians at SH degree ``--sh-degree`` (all degrees active from the first step) and no
densification, so the total stays fixed. The Gaussians are random in the cube [-1, 1]^3 round the object (random
colours, isotropic at half the mean spacing, opacity 0.1), drawn in chunks of 2^20 rows each from its own seed:
every rank builds only its block, and every K trains the same set (the losses must agree). Per rank: the
Gaussian state (parameters, gradients, Adam moments), the peak resident set above the level before the Gaussians
were built (the interpreter, torch, numba's kernels and the views excluded; what training the Gaussians costs),
the absolute peak, the median step time and the bytes sent per step; ratios to the first K:

    python bench/splat_distributed.py --mode scale --gaussians 1000000 --views 8 --width 128 --height 96 \
        --batch-size 4 --steps 4 --ranks 1 2 4       # -> bench/results/splat_distributed_scale.json

``--mode largest`` is the same measurement with the defaults of the largest scene this machine is asked to train
(issue 14: 10 M Gaussians at SH degree 3, 100 steps, across K ranks): 8 views at 128 x 96, a batch of one view
(a second would add 3-4.5 GiB a rank of render buffers), ``--ranks 2``; any of them can be given. From its 1 M
version (``--gaussians 1000000 --steps 3``: 1.9 s a step, +0.9 / +0.75 GiB on the two ranks) it needs ~33 min
and ~17 GiB for the two ranks together, so run it on a machine otherwise idle:

    python bench/splat_distributed.py --mode largest --verbose  # -> bench/results/splat_distributed_largest.json

``--mode psnr`` is the end-to-end check: ``manyview synth`` writes an object scene, ``manyview splat`` trains it in
one process and ``torchrun --nproc-per-node 2 -m manyview splat`` with two, with the same options; their held-out
PSNRs (eval.json) must agree within 0.1 dB (the script exits 1 if not):

    python bench/splat_distributed.py --mode psnr --views 16 --width 128 --height 96 --steps 500 --batch-size 2 \
        --sh-degree 1                               # -> bench/results/splat_distributed_psnr.json

``--mode gpu`` needs a CUDA GPU (``bench/splat_gpu_check.sh`` runs it on a lent one): the NCCL path at world size 1
against the one-device paths, in one process. A synthetic object scene (``--views`` views at ``--width`` x
``--height``), ``--gaussians`` initial Gaussians from its points, no densification and every SH degree active
(a fixed total, so the paths time the same work); three trainers from the same Gaussians on the same GPU:
``SplatTrainer`` with gsplat (when it is installed and its kernels load), ``SplatTrainer`` with the staged reference
renderer, and ``ShardedSplatTrainer`` on an NCCL group of one (DTensor Gaussians, the sharded render's exchange,
the reference renderer: the NCCL path). Before training every path renders the training views: the NCCL images
against the reference ones (equal to float rounding) and against gsplat's (PSNR between them: gsplat's alpha
clamp and per-tile extents differ slightly); then ``--steps`` steps of ``--batch-size`` views each, the median step
time (CUDA synchronised, the first step left out), the peak GPU memory, the losses, and the held-out PSNR after
the steps; time ratios against gsplat and against the reference:

    python bench/splat_distributed.py --mode gpu --views 8 --width 128 --height 96 --gaussians 10000 \
        --batch-size 2 --steps 20                   # -> bench/results/splat_distributed_gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manyview.io.atomic import atomic_open
from manyview.profiling import MemoryMeter
from manyview.scene import Cameras

OUT = Path(__file__).resolve().parent / "results" / "splat_distributed.json"
OUT_TRAIN = OUT.with_name("splat_distributed_train.json")
OUT_PSNR = OUT.with_name("splat_distributed_psnr.json")
OUT_SCALE = OUT.with_name("splat_distributed_scale.json")
OUT_LARGEST = OUT.with_name("splat_distributed_largest.json")
OUT_GPU = OUT.with_name("splat_distributed_gpu.json")
GPU = {"gaussians": 10_000, "views": 8, "width": 128, "height": 96, "batch_size": 2, "steps": 20}  # --mode gpu
LARGEST = {"gaussians": 10_000_000, "steps": 100, "sh_degree": 3, "ranks": [2], "views": 8, "width": 128,
           "height": 96, "batch_size": 1}  # --mode largest's defaults (any of them can be given)
CHUNK = 1 << 20  # rows drawn from one seed by random_block


def cameras_on_circle(n: int, width: int, height: int) -> Cameras:
    angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    eyes = torch.stack([2.6 * torch.sin(angles), torch.full_like(angles, -0.3), -2.6 * torch.cos(angles)], -1)
    f = 900.0 * width / 1280
    return Cameras.look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0]),
                           torch.tensor([f, f, width / 2, height / 2]), (height, width)).to(torch.float32)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    from manyview.splat import random_in_box, render
    from manyview.splat.distributed_render import camera_block, exchange_stats
    from manyview.splat.sharded import ShardedGaussians, gaussian_mesh

    mesh = gaussian_mesh()
    cams = cameras_on_circle(args.cameras, args.width, args.height)
    warm = ShardedGaussians.distribute(random_in_box(64, seed=1), mesh).requires_grad_()
    render(warm, cams).rgb.to_local().sum().backward()  # load the kernels before measuring
    full = random_in_box(args.gaussians, opacity=0.5, seed=0)
    params = {n: torch.nn.Parameter(t) for n, t in ShardedGaussians.distribute(full, mesh).as_dict().items()}
    del full, warm
    gc.collect()
    store = ShardedGaussians.from_dict(params)
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    start, stop = camera_block(len(cams), world, rank)
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(len(cams), 3, args.height, args.width, generator=gen)[start:stop],
               torch.randn(len(cams), args.height, args.width, generator=gen)[start:stop]]
    times, losses = [], []
    with MemoryMeter("cpu") as meter, exchange_stats() as exchanged:
        for _ in range(args.steps):
            dist.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            out = render(store, cams)
            loss = (out.rgb.to_local() * weights[0]).sum() + (out.alpha.to_local() * weights[1]).sum()
            loss.backward()
            opt.step()
            dist.barrier()
            times.append(time.perf_counter() - t0)
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(float(total))
    state = [params.values(), (p.grad for p in params.values()),
             (v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)]
    state_bytes = sum(t.to_local().numel() * t.element_size() for group in state for t in group)
    result = {"rank": rank, "gaussians_local": len(store.local()), "cameras_rasterised": stop - start,
              "state_bytes": state_bytes, "peak_rss_increase_bytes": meter.increase_bytes,
              "step_s_median": statistics.median(times), "step_s": times, "losses": losses,
              "bytes_sent_per_step": exchanged["bytes_sent"] // args.steps,
              "bytes_received_per_step": exchanged["bytes_received"] // args.steps,
              "pairs_sent_per_step": exchanged["pairs_sent"] // args.steps}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _timed_steps(trainer, steps: int, after_step=None) -> tuple[list[float], list[float]]:
    """``steps`` trainer steps, each timed between barriers (the slowest rank's time); (seconds, losses).
    ``after_step(n, info)`` sees step n's (1-based) info, with its time as ``step_s``."""
    times, losses = [], []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        info = trainer.train_step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
        losses.append(info["loss"])
        if after_step is not None:
            after_step(len(times), {**info, "step_s": times[-1]})
    return times, losses


def _training_state_bytes(trainer) -> int:
    """This rank's bytes of Gaussian parameters, their gradients and Adam's moments."""
    params = list(trainer.params.values())
    state = [params, [p.grad for p in params if p.grad is not None],
             [v for opt in trainer.optimizers.values() for s in opt.state.values() for v in s.values()
              if torch.is_tensor(v) and v.dim() > 0]]
    return sum(t.to_local().numel() * t.element_size() for group in state for t in group)


def _train_worker(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    """The splat trainer on ``world`` ranks (gloo) for ``args.steps`` steps: memory, step times, losses."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MANYVIEW_QUIET="1")
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    from manyview.scene import Views
    from manyview.splat.distributed_render import exchange_stats
    from manyview.splat.sharded_trainer import ShardedSplatTrainer
    from manyview.splat.trainer import SplatTrainConfig
    from manyview.synth import generate

    _, sample = generate(args.seed, kind="object", num_views=args.views, height=args.height, width=args.width)
    views = Views(images=sample.images, cameras=sample.cameras, names=sample.names)
    points = sample.point_cloud(max_points=args.gaussians)
    config = SplatTrainConfig(iterations=args.steps, batch_size=args.batch_size, sh_degree=args.sh_degree,
                              max_init_points=args.gaussians, checkpoint_every=0, scale_schedule=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ShardedSplatTrainer(views, tmp, config, points=points)
        del sample, points
        gc.collect()
        sizes = []
        with MemoryMeter("cpu") as meter, exchange_stats() as exchanged:
            times, losses = _timed_steps(trainer, args.steps,
                                         lambda n, info: sizes.append(len(trainer.params["means"])))
    params = list(trainer.params.values())
    state_bytes = _training_state_bytes(trainer)
    result = {"rank": rank, "gaussians_local": len(params[0].to_local()), "gaussians_total": sizes,
              "state_bytes": state_bytes, "peak_rss_increase_bytes": meter.increase_bytes,
              "step_s_median": statistics.median(times), "step_s": times, "losses": losses,
              "bytes_sent_per_step": exchanged["bytes_sent"] // args.steps}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def random_block(total: int, sh_degree: int, mesh, seed: int = 0):
    """This rank's block of ``total`` random Gaussians (a ShardedGaussians): uniform in [-1, 1]^3, random colours,
    isotropic at half the mean spacing, opacity 0.1. Chunk c of CHUNK rows is drawn from seed (seed, c), so every
    number of ranks holds the same set, and a rank builds only the chunks its block overlaps (float64 for one
    chunk at a time, its rows float32)."""
    from manyview.splat.gaussians import PARAMETER_NAMES, Gaussians
    from manyview.splat.sh import num_coefficients, rgb_to_sh
    from manyview.splat.sharded import ShardedGaussians, chunk_sizes, wrap_rows

    sizes = chunk_sizes(total, mesh.size())
    start = sum(sizes[:mesh.get_local_rank()])
    stop = start + sizes[mesh.get_local_rank()]
    log_scale = math.log(0.5 * (8.0 / total) ** (1 / 3))
    logit = math.log(0.1 / 0.9)
    parts = []
    for c in range(start // CHUNK, -(-stop // CHUNK)):
        n = min(CHUNK, total - c * CHUNK)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        xyz = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1
        rgb = torch.rand(n, 3, generator=gen, dtype=torch.float64)
        lo, hi = max(start, c * CHUNK) - c * CHUNK, min(stop, c * CHUNK + n) - c * CHUNK
        m = hi - lo
        parts.append(Gaussians(means=xyz[lo:hi].float(), log_scales=torch.full((m, 3), log_scale),
                               quats=torch.tensor([1.0, 0, 0, 0]).expand(m, 4).contiguous(),
                               opacity_logits=torch.full((m,), logit), sh_dc=rgb_to_sh(rgb[lo:hi]).float()[:, None],
                               sh_rest=torch.zeros(m, num_coefficients(sh_degree) - 1, 3)))
        del xyz, rgb
    if not parts:  # an empty block
        parts.append(Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0),
                               torch.zeros(0, 1, 3), torch.zeros(0, num_coefficients(sh_degree) - 1, 3)))
    local = {n: torch.cat([getattr(p, n) for p in parts]) for n in PARAMETER_NAMES}
    del parts
    return ShardedGaussians(*(wrap_rows(local[n], mesh, total) for n in PARAMETER_NAMES))


def _scale_worker(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    """The splat trainer on ``world`` ranks at a fixed total of Gaussians: memory per rank, step times, bytes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MANYVIEW_QUIET="1")
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=1800))
    from manyview.profiling import _rss_bytes
    from manyview.scene import Views
    from manyview.splat import DensifyStrategy, random_in_box, render
    from manyview.splat.distributed_render import exchange_stats
    from manyview.splat.sharded import ShardedGaussians, gaussian_mesh
    from manyview.splat.sharded_trainer import ShardedSplatTrainer
    from manyview.splat.trainer import SplatTrainConfig
    from manyview.synth import generate

    mesh = gaussian_mesh()
    _, sample = generate(args.seed, kind="object", num_views=args.views, height=args.height, width=args.width)
    views = Views(images=sample.images, cameras=sample.cameras, names=sample.names)
    del sample
    warm = ShardedGaussians.distribute(random_in_box(64, sh_degree=args.sh_degree, seed=1), mesh).requires_grad_()
    render(warm, views.cameras[:2]).rgb.to_local().sum().backward()  # load numba's kernels before measuring
    del warm
    gc.collect()
    config = SplatTrainConfig(iterations=args.steps, batch_size=args.batch_size, sh_degree=args.sh_degree,
                              sh_increase_every=0, checkpoint_every=0, test_every=0,
                              densify=DensifyStrategy(refine_stop_iter=0))  # a fixed total: no densification
    dist.barrier()
    before = _rss_bytes()
    with tempfile.TemporaryDirectory() as tmp, MemoryMeter("cpu") as meter:
        t0 = time.perf_counter()
        trainer = ShardedSplatTrainer(views, tmp, config, gaussians=random_block(args.gaussians, args.sh_degree,
                                                                               mesh, args.seed))
        dist.barrier()
        build_s = time.perf_counter() - t0
        built = _rss_bytes()
        def report(n: int, info: dict) -> None:
            if rank == 0 and args.verbose:
                print(f"  K={world} step {n}: {info['step_s']:.2f} s, loss {info['loss']:.6f}", flush=True)

        with exchange_stats() as exchanged:
            times, losses = _timed_steps(trainer, args.steps, report)
    params = list(trainer.params.values())
    state_bytes = _training_state_bytes(trainer)
    result = {"rank": rank, "gaussians_local": len(params[0].to_local()), "state_bytes": state_bytes,
              "rss_before_bytes": before, "rss_after_build_bytes": built,
              "peak_rss_increase_bytes": meter.peak_bytes - before, "peak_rss_bytes": meter.peak_bytes,
              "build_s": build_s, "step_s_median": statistics.median(times), "step_s": times, "losses": losses,
              "bytes_sent_per_step": exchanged["bytes_sent"] // args.steps,
              "pairs_sent_per_step": exchanged["pairs_sent"] // args.steps}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        worker = {"train": _train_worker, "scale": _scale_worker, "largest": _scale_worker}.get(args.mode, _worker)
        mp.spawn(worker, args=(world, _free_port(), args, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def psnr_check(args: argparse.Namespace) -> dict:
    """``manyview splat`` on one process and on two (torchrun) on the same synthetic scene: held-out PSNRs."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MANYVIEW_QUIET": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp, "scene")
        subprocess.run([sys.executable, "-m", "manyview", "synth", "--kind", "object", "--views", str(args.views),
                        "--height", str(args.height), "--width", str(args.width), "--seed", str(args.seed),
                        "--out", str(dataset)], check=True, env=env, stdout=subprocess.DEVNULL)
        options = ["splat", str(dataset), "--iterations", str(args.steps), "--batch-size", str(args.batch_size),
                   "--sh-degree", str(args.sh_degree), "--checkpoint-every", "0", "--max-width", "0"]
        launchers = {"1": [sys.executable, "-m", "manyview"],
                     "2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "manyview"]}
        runs = {}
        for k, launcher in launchers.items():
            out = Path(tmp, f"run{k}")
            t0 = time.perf_counter()
            subprocess.run([*launcher, *options, "--out", str(out)], check=True, env=env)
            seconds = time.perf_counter() - t0
            evaluation = json.loads((out / "eval.json").read_text())
            runs[k] = {"psnr": evaluation["psnr"], "ssim": evaluation["ssim"], "gaussians": evaluation["gaussians"],
                       "seconds": seconds}
            print(f"{k} process(es): held-out PSNR {evaluation['psnr']:.4f} dB, {evaluation['gaussians']} Gaussians, "
                  f"{seconds:.0f} s", flush=True)
    difference = abs(runs["1"]["psnr"] - runs["2"]["psnr"])
    return {"runs": runs, "psnr_difference_db": difference, "within_0_1_db": difference <= 0.1}


def _nccl_world_of_one():
    """An NCCL process group of one in this process on GPU 0 (what ``manyview splat --device cuda --resume`` makes
    for a torchrun checkpoint), and its CUDA mesh."""
    from manyview.splat.sharded import gaussian_mesh

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=torch.device("cuda", 0))
    return gaussian_mesh()


def _gsplat_problem(cameras: Cameras) -> str | None:
    """None when gsplat renders on this GPU, else why not (its CUDA kernels compile on first use)."""
    from manyview.splat import random_in_box, render
    from manyview.splat.render import gsplat_available

    if not gsplat_available():
        return "gsplat is not installed"
    try:
        render(random_in_box(16, seed=0).to("cuda"), cameras[:1].to("cuda"), backend="gsplat").rgb.sum().item()
    except Exception as exc:  # noqa: BLE001 - reported in the results instead
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return f"gsplat did not render: {type(exc).__name__}: {first}"
    return None


def _gpu_path(make, steps: int) -> dict:
    """Build a trainer with ``make()``, render its training views, train ``steps`` steps (each timed between CUDA
    synchronisations), evaluate on the held-out views and render them."""
    from manyview.profiling import MemoryMeter as Meter

    torch.cuda.synchronize()
    with Meter("cuda") as meter:
        t0 = time.perf_counter()
        trainer = make()
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t0
        before = trainer.render_views(trainer.train_ids).cpu()
        times, losses = [], []
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            info = trainer.train_step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(info["loss"])
        evaluation = trainer.evaluate(with_lpips=False)
        after = trainer.render_views(trainer.test_ids or trainer.train_ids).cpu()
    result = {"build_s": build_s, "step_s_median": statistics.median(times[1:] or times), "step_s": times,
              "losses": losses, "peak_gpu_bytes": meter.peak_bytes, "held_out_psnr": evaluation["psnr"],
              "gaussians": len(trainer.params["means"]), "backend": trainer.config.backend,
              "device": str(trainer.device)}
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return {"result": result, "before": before, "after": after}


def gpu_check(args: argparse.Namespace) -> dict:
    """The NCCL path at world size 1 against the one-device gsplat and reference paths on one GPU (module
    docstring, ``--mode gpu``)."""
    from manyview.metrics.image import psnr
    from manyview.scene import Views
    from manyview.splat import DensifyStrategy
    from manyview.splat.sharded_trainer import ShardedSplatTrainer
    from manyview.splat.trainer import SplatTrainConfig, SplatTrainer
    from manyview.synth import generate

    if not torch.cuda.is_available():
        raise SystemExit("bench: --mode gpu needs a CUDA GPU (bench/splat_gpu_check.sh runs it on a lent one)")
    _, sample = generate(args.seed, kind="object", num_views=args.views, height=args.height, width=args.width)
    views = Views(images=sample.images, cameras=sample.cameras, names=sample.names)
    points = sample.point_cloud(max_points=args.gaussians)

    def config(backend: str) -> SplatTrainConfig:  # a fixed total: no densification, every SH degree from the start
        return SplatTrainConfig(iterations=args.steps, batch_size=args.batch_size, sh_degree=args.sh_degree,
                                sh_increase_every=0, max_init_points=args.gaussians, checkpoint_every=0,
                                densify=DensifyStrategy(refine_stop_iter=0), backend=backend)

    problem = "skipped (--no-gsplat)" if args.no_gsplat else _gsplat_problem(views.cameras)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if problem is None:
            runs["gsplat"] = _gpu_path(lambda: SplatTrainer(views, Path(tmp, "g"), config("gsplat"), points=points,
                                                            device="cuda"), args.steps)
        runs["reference"] = _gpu_path(lambda: SplatTrainer(views, Path(tmp, "r"), config("reference"),
                                                           points=points, device="cuda"), args.steps)
        mesh = _nccl_world_of_one()
        try:
            runs["nccl_k1"] = _gpu_path(lambda: ShardedSplatTrainer(views, Path(tmp, "n"), config("reference"),
                                                                    points=points, mesh=mesh), args.steps)
        finally:
            dist.destroy_process_group()
    for name, run in runs.items():
        r = run["result"]
        print(f"{name}: step {r['step_s_median'] * 1e3:.1f} ms (median of {len(r['step_s']) - 1}), peak GPU "
              f"{r['peak_gpu_bytes'] / 2**30:.2f} GiB, held-out PSNR {r['held_out_psnr']:.3f} dB, "
              f"{r['gaussians']} Gaussians", flush=True)

    def compare(a: str, b: str, when: str) -> dict:
        """Max |difference| and the PSNR of one path's images against the other's (None: identical)."""
        x, y = runs[a][when], runs[b][when]
        db = float(psnr(x.double(), y.double()).mean())
        return {"max_abs": float((x - y).abs().max()), "psnr_db": db if math.isfinite(db) else None}

    nccl, ref = runs["nccl_k1"]["result"], runs["reference"]["result"]
    result = {"paths": {name: run["result"] for name, run in runs.items()}, "gsplat_problem": problem,
              "images_before_training": {"nccl_vs_reference": compare("nccl_k1", "reference", "before")},
              "images_after_training": {"nccl_vs_reference": compare("nccl_k1", "reference", "after")},
              "loss_rel_diff_nccl_vs_reference": max(abs(a - b) / max(abs(b), 1e-12)
                                                     for a, b in zip(nccl["losses"], ref["losses"])),
              "time_ratio_nccl_over_reference": nccl["step_s_median"] / ref["step_s_median"]}
    if "gsplat" in runs:
        g = runs["gsplat"]["result"]
        result["images_before_training"]["nccl_vs_gsplat"] = compare("nccl_k1", "gsplat", "before")
        result["images_after_training"]["nccl_vs_gsplat"] = compare("nccl_k1", "gsplat", "after")
        result["loss_rel_diff_nccl_vs_gsplat"] = max(abs(a - b) / max(abs(b), 1e-12)
                                                     for a, b in zip(nccl["losses"], g["losses"]))
        result["time_ratio_nccl_over_gsplat"] = nccl["step_s_median"] / g["step_s_median"]
        result["time_ratio_reference_over_gsplat"] = ref["step_s_median"] / g["step_s_median"]
    # equal images: the NCCL path renders what the one-device reference renders (float rounding), and what gsplat
    # renders up to gsplat's own semantics (tests/splat/test_splat_gsplat.py asks 30 dB of it against the reference)
    gsplat_db = result["images_before_training"].get("nccl_vs_gsplat", {}).get("psnr_db")
    result["images_equal"] = result["images_before_training"]["nccl_vs_reference"]["max_abs"] <= 1e-5 and (
        "gsplat" not in runs or gsplat_db is None or gsplat_db >= 30)
    for when in ("images_before_training", "images_after_training"):
        print(f"{when}: " + ", ".join(f"{k} max |diff| {v['max_abs']:.2e}, PSNR "
                                      + ("inf" if v["psnr_db"] is None else f"{v['psnr_db']:.2f}") + " dB"
                                      for k, v in result[when].items()), flush=True)
    ratios = {k: v for k, v in result.items() if k.startswith("time_ratio")}
    print("time ratios: " + ", ".join(f"{k[len('time_ratio_'):]} {v:.2f}" for k, v in ratios.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["render", "train", "psnr", "scale", "largest", "gpu"], default="render",
                        help="render: render + linear loss + Adam on random Gaussians; train: the splat trainer; "
                             "psnr: manyview splat on 1 and 2 processes, held-out PSNR; scale: the trainer at a "
                             "fixed total of Gaussians, memory per rank; largest: scale with 10 M Gaussians, 100 "
                             "steps, 2 ranks by default; gpu: the NCCL path at world size 1 against gsplat and the "
                             "reference on one CUDA GPU")
    parser.add_argument("--gaussians", type=int, default=None, help="default 200,000 (largest: 10,000,000)")
    parser.add_argument("--views", type=int, default=None, help="train/scale: views of the synthetic scene "
                                                                "(default 16; largest 8)")
    parser.add_argument("--batch-size", type=int, default=None, help="train/scale: views per step (default 4; "
                                                                     "largest 1)")
    parser.add_argument("--sh-degree", type=int, default=3, help="train/scale")
    parser.add_argument("--seed", type=int, default=0, help="train/scale: the synthetic scene")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--width", type=int, default=None, help="default 640 (largest 128)")
    parser.add_argument("--height", type=int, default=None, help="default 360 (largest 96)")
    parser.add_argument("--steps", type=int, default=None, help="default 5 (largest 100)")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="default 1 2 (largest 2)")
    parser.add_argument("--verbose", action="store_true", help="scale/largest: print every step's time")
    parser.add_argument("--no-gsplat", action="store_true", help="gpu: leave the gsplat path out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default {OUT} ({OUT_TRAIN.name}, {OUT_SCALE.name}, {OUT_LARGEST.name}, "
                             f"{OUT_PSNR.name} in the other modes)")
    args = parser.parse_args()
    defaults = {"gaussians": 200_000, "views": 16, "batch_size": 4, "width": 640, "height": 360, "steps": 5,
                "ranks": [1, 2]}
    if args.mode == "largest":
        defaults.update(LARGEST)
    if args.mode == "gpu":
        defaults.update(GPU)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = {"train": OUT_TRAIN, "psnr": OUT_PSNR, "scale": OUT_SCALE, "largest": OUT_LARGEST,
                    "gpu": OUT_GPU}.get(args.mode, OUT)
    if args.mode == "gpu":
        used = ("views", "width", "height", "gaussians", "steps", "batch_size", "sh_degree", "seed", "no_gsplat")
        result = {"benchmark": "splat_distributed_gpu", "config": {k: getattr(args, k) for k in used},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                              "cuda": torch.version.cuda,
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                  **gpu_check(args)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"images equal: {result['images_equal']}; wrote {args.out}")
        raise SystemExit(0 if result["images_equal"] else 1)
    if args.mode == "psnr":
        used = ("views", "width", "height", "steps", "batch_size", "sh_degree", "seed")  # what psnr_check reads
        result = {"benchmark": "splat_distributed_psnr", "config": {k: getattr(args, k) for k in used},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                  **psnr_check(args)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"held-out PSNR difference {result['psnr_difference_db']:.5f} dB; wrote {args.out}")
        raise SystemExit(0 if result["within_0_1_db"] else 1)
    runs = {}
    for world in args.ranks:
        ranks = run(world, args)
        per_step = max(r["step_s_median"] for r in ranks)
        runs[str(world)] = {"ranks": ranks, "step_s": per_step,
                            "state_bytes_max_rank": max(r["state_bytes"] for r in ranks),
                            "peak_rss_increase_max_rank": max(r["peak_rss_increase_bytes"] for r in ranks),
                            "bytes_exchanged_per_step": sum(r.get("bytes_sent_per_step", 0) for r in ranks),
                            "losses": ranks[0]["losses"]}
        print(f"K={world}: step {per_step:.2f} s, state per rank {runs[str(world)]['state_bytes_max_rank'] / 2**20:.1f}"
              f" MiB, peak RSS increase per rank {runs[str(world)]['peak_rss_increase_max_rank'] / 2**20:.1f} MiB, "
              f"exchanged {runs[str(world)]['bytes_exchanged_per_step'] / 2**20:.1f} MiB/step", flush=True)
    base = runs[str(args.ranks[0])]
    for world, r in runs.items():  # relative to the first K: memory should fall as 1/K
        r["state_ratio"] = r["state_bytes_max_rank"] / base["state_bytes_max_rank"]
        r["peak_rss_ratio"] = r["peak_rss_increase_max_rank"] / max(base["peak_rss_increase_max_rank"], 1)
        r["peak_rss_absolute_max_rank"] = max(x.get("peak_rss_bytes", 0) for x in r["ranks"])
        r["loss_rel_diff_vs_first"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], base["losses"]))
    result = {"benchmark": "splat_distributed" + ("" if args.mode == "render" else f"_{args.mode}"),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg()},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
