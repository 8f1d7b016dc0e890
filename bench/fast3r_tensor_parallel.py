"""Tensor-parallel Fast3R inference: memory per process and time of one forward pass for K = 1, 2 processes
(gloo on the CPU, one process per rank, spawned here) at 64 and 256 views.

Model: the tiny preset (fusion transformer 128 wide, 6 blocks, 4 heads; encoder 192 wide, 4 blocks, 3 heads) with
seeded random weights, on ``--size`` x ``--size`` random images (112: the size the bundled tiny model was trained
at). K = 1 is the plain one-process ``Fast3R.infer`` (no process group, nothing parallelised): the baseline.
K > 1 is :func:`manyview.models.fast3r_parallel.parallelize_fast3r` on a mesh over the K processes (fusion
transformer: heads and MLPs split; the tiny encoder's 3 heads do not split over 2, so only its MLPs are; DPT heads
split by views), each rank calling ``infer`` on the same images.

Every configuration runs in fresh processes. After a warm-up pass on 2 views (kernels loaded), each process runs
the pass twice on the same images: the first pass at that shape (what one ``manyview reconstruct`` run does) and a
second one (steady state: with gloo, the first pass at a new shape leaves buffers of the size of the
all-reduced activations allocated until the next pass, measured here as ``retained_after_first_bytes``). Per
process and pass: the peak resident-set increase over the level before the pass (``MemoryMeter``: activations,
outputs, communication buffers) and the wall time; and the bytes of the parameters the process holds. glibc's
``MALLOC_MMAP_THRESHOLD_`` is fixed at 64 KiB in the spawned processes so that every large tensor is its own
mapping, returned on free, and the resident set follows the live tensors (with glibc's default, dynamic
threshold, freed activations stay in the heap and the increase depends on what ran before). Each process runs
one torch thread, so K processes use K cores. Rank 0's pointmaps and confidences are compared with K = 1's (max
relative difference, which must stay below 1e-5).

    python bench/fast3r_tensor_parallel.py                       # 64 and 256 views, K = 1, 2; writes the table
    python bench/fast3r_tensor_parallel.py --views 8 --out /tmp/quick.json --no-readme    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manyview.io.atomic import atomic_open
from manyview.profiling import MemoryMeter, _rss_bytes

OUT = Path(__file__).resolve().parent / "results" / "fast3r_tensor_parallel.json"
MiB = 2 ** 20


def _images(views: int, size: int) -> torch.Tensor:
    return torch.rand(1, views, 3, size, size, generator=torch.Generator().manual_seed(views))


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, views: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    from manyview.models.fast3r import Fast3R
    from manyview.models.fast3r_parallel import fast3r_mesh, local_parameter_bytes, parallelize_fast3r

    torch.manual_seed(0)
    model = Fast3R("tiny").eval()
    plan = None
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=1800))
        plan = parallelize_fast3r(model, fast3r_mesh()).as_dict()
    model.infer(_images(2, args.size))  # warm-up: kernels loaded
    images = _images(views, args.size)
    passes = []
    for _ in range(2):  # the first pass at this shape, then the steady state
        out = None
        if world > 1:
            dist.barrier()
        before = _rss_bytes()
        with MemoryMeter("cpu") as meter:
            t0 = time.perf_counter()
            out = model.infer(images)
            seconds = time.perf_counter() - t0
        passes.append({"seconds": seconds, "peak_rss_increase_bytes": meter.increase_bytes,
                       "rss_before_bytes": before})
    result = {"rank": rank, "passes": passes, "parameter_bytes": local_parameter_bytes(model), "plan": plan,
              "retained_after_first_bytes": passes[1]["rss_before_bytes"] - passes[0]["rss_before_bytes"]}
    if rank == 0:
        torch.save({"pts": out.pts3d_global, "conf": out.conf_global, "pts_local": out.pts3d_local,
                    "conf_local": out.conf_local}, Path(out_dir, "outputs.pt"))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, views: int, args: argparse.Namespace) -> tuple[list[dict], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, _free_port(), args, views, tmp), nprocs=world, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
        return ranks, torch.load(Path(tmp, "outputs.pt"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def table(result: dict) -> str:
    c = result["config"]
    lines = [f"Tiny preset, {c['size']}x{c['size']} images, one torch thread per process, gloo on "
             f"{result['machine']['cpus']} shared CPU cores (load average {result['machine']['load_average_at_start'][0]:.1f} "
             f"at the start, {result['machine']['load_average_at_end'][0]:.1f} at the end: other jobs shared the cores, "
             "so times are indicative). Memory and time per process, the largest over the ranks; K = 1 is the plain "
             "one-process pass.",
             "",
             "| views | K | time, first / second pass (s) | speed-up (second) | parameters / process (MiB) "
             "| peak memory increase / process, first / second pass (MiB) | memory vs K = 1 (second) "
             "| max rel. diff vs K = 1 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for views, runs in result["runs"].items():
        for world, r in runs.items():
            (t1, t2), (m1, m2) = r["seconds"], r["peak_rss_increase_bytes"]
            lines.append(f"| {views} | {world} | {t1:.2f} / {t2:.2f} | {r['speedup']:.2f}x | "
                         f"{r['parameter_bytes'] / MiB:.2f} | {m1 / MiB:.0f} / {m2 / MiB:.0f} | "
                         f"{r['memory_ratio']:.2f} | {r['max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into bench/README.md")
    args = parser.parse_args()
    if args.ranks[0] != 1:
        parser.error("--ranks must start with 1 (the one-process baseline)")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by glibc when the spawned processes start
    load_start = os.getloadavg()
    runs = {}
    for views in args.views:
        runs[str(views)] = {}
        base = None
        for world in args.ranks:
            ranks, outputs = run(world, views, args)
            worst = lambda key: [max(x["passes"][i][key] for x in ranks) for i in range(2)]  # noqa: E731
            r = {"ranks": ranks, "seconds": worst("seconds"),
                 "parameter_bytes": max(x["parameter_bytes"] for x in ranks),
                 "peak_rss_increase_bytes": worst("peak_rss_increase_bytes"),
                 "retained_after_first_bytes": max(x["retained_after_first_bytes"] for x in ranks),
                 "plan": ranks[0]["plan"]}
            if base is None:
                base, base_outputs = r, outputs
            r["speedup"] = base["seconds"][1] / r["seconds"][1]
            r["memory_ratio"] = r["peak_rss_increase_bytes"][1] / max(base["peak_rss_increase_bytes"][1], 1)
            r["parameter_ratio"] = r["parameter_bytes"] / base["parameter_bytes"]
            r["max_rel_diff"] = max(_rel(outputs[k], base_outputs[k]) for k in outputs)
            runs[str(views)][str(world)] = r
            (t1, t2), (m1, m2) = r["seconds"], r["peak_rss_increase_bytes"]
            print(f"{views} views, K={world}: {t1:.2f} / {t2:.2f} s ({r['speedup']:.2f}x), parameters "
                  f"{r['parameter_bytes'] / MiB:.2f} MiB, peak memory increase {m1 / MiB:.0f} / {m2 / MiB:.0f} MiB"
                  f" ({r['memory_ratio']:.2f} of K=1) per process, retained after the first pass "
                  f"{r['retained_after_first_bytes'] / MiB:.0f} MiB, max rel diff {r['max_rel_diff']:.1e}", flush=True)
    result = {"benchmark": "fast3r_tensor_parallel",
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if not args.no_readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_table import write_table

        write_table("fast3r_tensor_parallel", table(result),
                    heading="Tensor-parallel Fast3R inference (`bench/fast3r_tensor_parallel.py`)")
        print("updated bench/README.md")


if __name__ == "__main__":
    main()
