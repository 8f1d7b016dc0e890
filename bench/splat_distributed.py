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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, _free_port(), args, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaussians", type=int, default=200_000)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    runs = {}
    for world in args.ranks:
        ranks = run(world, args)
        per_step = max(r["step_s_median"] for r in ranks)
        runs[str(world)] = {"ranks": ranks, "step_s": per_step,
                            "state_bytes_max_rank": max(r["state_bytes"] for r in ranks),
                            "peak_rss_increase_max_rank": max(r["peak_rss_increase_bytes"] for r in ranks),
                            "bytes_exchanged_per_step": sum(r["bytes_sent_per_step"] for r in ranks),
                            "losses": ranks[0]["losses"]}
        print(f"K={world}: step {per_step:.2f} s, state per rank {runs[str(world)]['state_bytes_max_rank'] / 2**20:.1f}"
              f" MiB, peak RSS increase per rank {runs[str(world)]['peak_rss_increase_max_rank'] / 2**20:.1f} MiB, "
              f"exchanged {runs[str(world)]['bytes_exchanged_per_step'] / 2**20:.1f} MiB/step", flush=True)
    base = runs[str(args.ranks[0])]
    for world, r in runs.items():  # relative to the first K: memory should fall as 1/K
        r["state_ratio"] = r["state_bytes_max_rank"] / base["state_bytes_max_rank"]
        r["peak_rss_ratio"] = r["peak_rss_increase_max_rank"] / max(base["peak_rss_increase_max_rank"], 1)
        r["loss_rel_diff_vs_first"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], base["losses"]))
    result = {"benchmark": "splat_distributed", "config": {k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg()},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
