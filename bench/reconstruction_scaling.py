"""Reconstruction scaling with the number of views: Fast3R against the pairwise (DUSt3R-style) baseline.

For N = 2, 4, 8, ... views of one synthetic scene at one resolution (224 x 224 by default), both at equal model
size (Fast3R preset ``tiny`` and ``PairwiseConfig.matching("tiny")``: the same encoder, decoders as wide and deep as
the fusion transformer, the same DPT heads; random weights, which do not change the cost):

- Fast3R: ``manyview.recon.reconstruct`` = one forward pass over all views + camera recovery (Weiszfeld + PnP);
- baseline: ``manyview.recon.reconstruct_pairwise`` = the network on the complete graph (N (N - 1) ordered pairs,
  each image encoded once) + global alignment (300 Adam iterations, spanning-tree init).

Only the rendered images of ``manyview.synth`` are used (no ground truth). Each configuration runs in a fresh
subprocess, one after the other, so that peak memory does not carry over; time is the wall clock of the library
call (CPU time of all threads is recorded too), memory the peak increase of the process (CPU: resident set; CUDA:
allocated) over its level before the call, see ``manyview.profiling.MemoryMeter``.

Stopping: a baseline run that passes ``--budget-s`` (600 s) is stopped once it is inside the global alignment with
at least 3 iterations done; its time is then the measured time plus the remaining iterations at the measured
per-iteration rate, marked "extrapolated" (the rest of the alignment has a constant cost per iteration). Larger N
are not run for the baseline ("not run: > budget"); the same holds when its pair inference alone passes the
budget. Either method stops at the memory limit (24 GB, or 80 % of the memory available at start when less):
when a run fails to allocate (the subprocess's data segment is capped at the limit) or when the previous row
predicts more than the limit.

    python bench/reconstruction_scaling.py [--max-n 128] [--quick] [--views N ...] [--size 224] [--budget-s 600]
        [--memory-limit-gb 24] [--ga-iterations 300] [--preset tiny] [--device cpu] [--threads N] [--out PATH.json]

Writes the JSON and a Markdown table beside it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
EXTRAPOLATED = "extrapolated"
GB = 1 << 30


class _OverBudget(Exception):
    pass


# ----------------------------------------------------------------------------------------------- one config
def run_one(method: str, n: int, size: int, preset: str, budget_s: float, ga_iterations: int, device: str,
            memory_limit: int, seed: int = 0) -> dict:
    """One configuration, in this (fresh) process; returns the row."""
    import torch

    from manyview import synth
    from manyview.models.fast3r import Fast3R
    from manyview.models.pairwise import PairwiseConfig, PairwiseNet
    from manyview.recon import GlobalAlignmentConfig
    from manyview.device import resolve_device
    from manyview.profiling import MemoryMeter
    from manyview.recon.reconstruct import reconstruct, reconstruct_pairwise

    device = resolve_device(device)
    if device.type == "cpu":  # allocations past the limit fail with an error instead of swapping the machine
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    _, views = synth.generate(seed, "object", num_views=n, height=size, width=size)
    images = views.images
    torch.manual_seed(0)
    model = Fast3R(preset) if method == "fast3r" else PairwiseNet(PairwiseConfig.matching(preset))
    model.to(device)
    # warm-up on two small views: one-time costs (kernel selection, OpenCV, allocator) are not measured
    warm = images[:2, :, :32, :32].contiguous()
    if method == "fast3r":
        reconstruct(warm, model, device=device, progress=False)
    else:
        reconstruct_pairwise(warm, model, device=device, ga=GlobalAlignmentConfig(iterations=2), progress=False)

    row = {"method": method, "n": n, "pairs": n * (n - 1) if method == "pairwise" else None, "status": "ok",
           "parameters": sum(p.numel() for p in model.parameters())}
    ticks: list[float] = []

    def budget(done: int, total: int, loss: float) -> None:
        ticks.append(time.perf_counter())
        if ticks[-1] - t0 > budget_s and done >= 3 and done < total:
            raise _OverBudget(done)

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with MemoryMeter(device) as meter:
            if method == "fast3r":
                rec = reconstruct(images, model, device=device, progress=False)
            else:
                rec = reconstruct_pairwise(images, model, device=device, progress=False,
                                           ga=GlobalAlignmentConfig(iterations=ga_iterations), ga_progress=budget)
        row.update(time_s=time.perf_counter() - t0, stages_s=rec.info["timings_s"],
                   mean_confidence=rec.info["mean_confidence"])
    except _OverBudget as stop:
        done = stop.args[0]
        measured = ticks[-1] - t0
        per_iteration = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
        row.update(status=EXTRAPOLATED, measured_s=measured, ga_iterations_run=done,
                   ga_seconds_per_iteration=per_iteration,
                   time_s=measured + per_iteration * (ga_iterations - done))
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "alloc" not in str(error).lower():
            raise
        return {**row, "status": f"not run: out of memory (limit {memory_limit / GB:.1f} GB)"}
    row.update(cpu_s=time.process_time() - c0, memory_increase_bytes=meter.increase_bytes,
               memory_peak_bytes=meter.peak_bytes, memory_kind=meter.kind)
    return row


# ----------------------------------------------------------------------------------------------- driver
def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _child(method: str, n: int, args, memory_limit: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--size", str(args.size),
           "--preset", args.preset, "--budget-s", str(args.budget_s), "--ga-iterations", str(args.ga_iterations),
           "--device", args.device, "--memory-limit-bytes", str(memory_limit)]
    env = dict(os.environ, MANYVIEW_QUIET="1")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    # the pair inference cannot be interrupted from inside: a hard limit well past the budget
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2 * args.budget_s + 300)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "status": f"not run: > {args.budget_s:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if done.returncode in (-9, 137):
            return {"method": method, "n": n, "status": "not run: killed (out of memory?)"}
        return {"method": method, "n": n, "status": f"failed: {tail}"}
    return json.loads(lines[-1])


def _fmt_time(row: dict | None) -> str:
    if row is None:
        return "-"
    if "time_s" not in row:
        return row["status"]
    mark = " (extrapolated)" if row["status"] == EXTRAPOLATED else ""
    return f"{row['time_s']:.2f}{mark}"


def _fmt_mem(row: dict | None) -> str:
    if row is None or "memory_increase_bytes" not in row:
        return "-"
    return f"{row['memory_increase_bytes'] / 2**20:.0f}"


def markdown(result: dict) -> str:
    lines = [
        f"Reconstruction scaling at {result['size']}x{result['size']}, preset `{result['preset']}` (equal model "
        f"size), device {result['device']}, {result['ga_iterations']} alignment iterations. Time: wall clock of "
        "the library call (s); memory: peak increase over the level before the call (MiB).",
        "",
        "| views | pairs | Fast3R time | Fast3R memory | baseline time | baseline memory | time ratio | memory ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        f, p = r["fast3r"], r["pairwise"]
        ratio_t = f"{r['time_ratio']:.1f}" if r.get("time_ratio") else "-"
        ratio_m = f"{r['memory_ratio']:.1f}" if r.get("memory_ratio") else "-"
        lines.append(f"| {r['n']} | {r['n'] * (r['n'] - 1)} | {_fmt_time(f)} | {_fmt_mem(f)} | {_fmt_time(p)} | "
                     f"{_fmt_mem(p)} | {ratio_t} | {ratio_m} |")
    g = result["goals"]
    lines += ["", f"- baseline / Fast3R time at 32 views: {g['time_ratio_at_32']} (goal >= 250)",
              f"- Fast3R memory(64) / memory(16): {g['fast3r_memory_64_over_16']} (goal <= 4.5)",
              f"- machine: {result['machine']}"]
    return "\n".join(lines) + "\n"


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or key not in a or key not in b or not b[key]:
        return None
    return a[key] / b[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="N up to 16, a 120 s budget, results *_quick.*")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--ga-iterations", type=int, default=300)
    parser.add_argument("--memory-limit-gb", type=float, default=24.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--views", type=int, nargs="+", default=None,
                        help="run only these N (e.g. --views 32 --budget-s 20000 for the 32-view row to completion); "
                             "results *_views.*")
    parser.add_argument("--child", choices=("fast3r", "pairwise"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child, args.n, args.size, args.preset, args.budget_s, args.ga_iterations,
                                 args.device, args.memory_limit_bytes)), flush=True)
        return

    if args.quick:
        args.max_n = min(args.max_n, 16)
        args.budget_s = min(args.budget_s, 120.0)
    default_name = ("reconstruction_scaling_views.json" if args.views else
                    "reconstruction_scaling_quick.json" if args.quick else "reconstruction_scaling.json")
    out = args.out or RESULTS / default_name
    limit = int(args.memory_limit_gb * GB)
    available = _available_memory()
    if available is not None and args.device == "cpu":
        limit = min(limit, int(0.8 * available))
    import torch

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), load average at start {os.getloadavg()[0]:.1f}")
    sizes = [2]
    while sizes[-1] * 2 <= args.max_n:
        sizes.append(sizes[-1] * 2)
    if args.views:
        sizes = sorted(set(args.views))
    stopped = {"fast3r": None, "pairwise": None}
    last = {"fast3r": None, "pairwise": None}
    rows = []
    for n in sizes:
        row = {"n": n}
        for method in ("fast3r", "pairwise"):
            prev = last[method]
            growth = 4.0 if method == "pairwise" else 2.0  # pairs grow ~4x with 2x views; Fast3R ~linearly
            if stopped[method]:
                result = {"method": method, "n": n, "status": stopped[method]}
            elif prev and prev.get("memory_peak_bytes", 0) * growth > limit:
                result = {"method": method, "n": n,
                          "status": f"not run: estimated > memory limit {limit / GB:.1f} GB"}
            else:
                result = _child(method, n, args, limit)
            if result.get("status") == EXTRAPOLATED or (result.get("time_s") or 0) > args.budget_s:
                stopped[method] = f"not run: > {args.budget_s:.0f} s"
            elif not result.get("status", "").startswith(("ok", EXTRAPOLATED)):
                stopped[method] = stopped[method] or result["status"]
            last[method] = result if "time_s" in result else prev
            row[method] = result
            shown = f"{_fmt_time(result)} s, {_fmt_mem(result)} MiB" if "time_s" in result else result["status"]
            print(f"N={n:4d} {method:8s} {shown}", file=sys.stderr, flush=True)
        row["time_ratio"] = _ratio(row["pairwise"], row["fast3r"], "time_s")
        row["memory_ratio"] = _ratio(row["pairwise"], row["fast3r"], "memory_increase_bytes")
        rows.append(row)

    by_n = {r["n"]: r for r in rows}
    f64, f16 = (by_n.get(k, {}).get("fast3r") for k in (64, 16))
    m = _ratio(f64, f16, "memory_increase_bytes")
    t32 = by_n.get(32, {}).get("time_ratio")
    result = {
        "size": args.size, "preset": args.preset, "device": args.device, "ga_iterations": args.ga_iterations,
        "budget_s": args.budget_s, "memory_limit_bytes": limit, "quick": args.quick, "machine": machine,
        "load_average_end": os.getloadavg()[0],
        "goals": {"time_ratio_at_32": None if t32 is None else round(t32, 1),
                  "fast3r_memory_64_over_16": None if m is None else round(m, 2)},
        "rows": rows,
    }
    from manyview.io.atomic import atomic_open

    table = markdown(result)
    with atomic_open(out, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    with atomic_open(out.with_suffix(".md"), "w") as fh:
        fh.write(table)
    print(table)


if __name__ == "__main__":
    main()
