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

``--mode psnr`` is the end-to-end check: ``manyview synth`` writes an object scene, ``manyview splat`` trains it in
one process and ``torchrun --nproc-per-node 2 -m manyview splat`` with two, with the same options; their held-out
PSNRs (eval.json) must agree within 0.1 dB (the script exits 1 if not):

    python bench/splat_distributed.py --mode psnr --views 16 --width 128 --height 96 --steps 500 --batch-size 2 \
        --sh-degree 1                               # -> bench/results/splat_distributed_psnr.json
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
        times, losses, sizes = [], [], []
        with MemoryMeter("cpu") as meter, exchange_stats() as exchanged:
            for _ in range(args.steps):
                dist.barrier()
                t0 = time.perf_counter()
                info = trainer.train_step()
                dist.barrier()
                times.append(time.perf_counter() - t0)
                losses.append(info["loss"])
                sizes.append(len(trainer.params["means"]))
    params = list(trainer.params.values())
    state = [params, [p.grad for p in params if p.grad is not None],
             [v for opt in trainer.optimizers.values() for s in opt.state.values() for v in s.values()
              if torch.is_tensor(v) and v.dim() > 0]]
    state_bytes = sum(t.to_local().numel() * t.element_size() for group in state for t in group)
    result = {"rank": rank, "gaussians_local": len(params[0].to_local()), "gaussians_total": sizes,
              "state_bytes": state_bytes, "peak_rss_increase_bytes": meter.increase_bytes,
              "step_s_median": statistics.median(times), "step_s": times, "losses": losses,
              "bytes_sent_per_step": exchanged["bytes_sent"] // args.steps}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        worker = _train_worker if args.mode == "train" else _worker
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["render", "train", "psnr"], default="render",
                        help="render: render + linear loss + Adam on random Gaussians; train: the splat trainer; "
                             "psnr: manyview splat on 1 and 2 processes, held-out PSNR")
    parser.add_argument("--gaussians", type=int, default=200_000)
    parser.add_argument("--views", type=int, default=16, help="train mode: views of the synthetic scene")
    parser.add_argument("--batch-size", type=int, default=4, help="train mode: views per step")
    parser.add_argument("--sh-degree", type=int, default=3, help="train mode")
    parser.add_argument("--seed", type=int, default=0, help="train mode: the synthetic scene")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help=f"default {OUT} ({OUT_TRAIN.name} in train mode)")
    args = parser.parse_args()
    if args.out is None:
        args.out = {"train": OUT_TRAIN, "psnr": OUT_PSNR}.get(args.mode, OUT)
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
        r["loss_rel_diff_vs_first"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], base["losses"]))
    result = {"benchmark": "splat_distributed" + ("_train" if args.mode == "train" else ""),
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
