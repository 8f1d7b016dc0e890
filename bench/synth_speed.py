"""Synthetic data throughput: views per second at 256 x 256, object and room scenes, with and without 2x2 supersampling.

Compares in the same run the CPU fast path (numba kernel, ``backend="numba"``) with the torch casters it
replaces: all primitives of a shape at once (``"batched"``) and one primitive at a time (``"loop"``, the naive
baseline). Reports wall-clock views/s and process CPU time per view (every thread counted), since the shared
machines are noisy; the speed-up column is wall-clock against the loop baseline.

    python bench/synth_speed.py [--size 256] [--views 32] [--torch-views 4] [--threads N] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numba
import torch

from manyview.io.atomic import atomic_open
from manyview.synth import make_scene, render, sample_cameras


def measure(kind: str, backend: str, supersample: int, size: int, views: int, seed: int = 0) -> dict:
    scene = make_scene(seed, kind)
    cams = sample_cameras(scene, views, size, size, seed=seed)
    render(scene, cams[:1], backend=backend, supersample=supersample)  # warm-up: numba compile / cache load
    wall, cpu = time.perf_counter(), time.process_time()
    out = render(scene, cams, backend=backend, supersample=supersample)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.images.shape == (views, 3, size, size)
    return dict(kind=kind, backend=backend, supersample=supersample, size=size, views=views,
                primitives=len(scene.primitives), seconds=wall, views_per_s=views / wall,
                cpu_ms_per_view=1000 * cpu / views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=32, help="views rendered per numba measurement")
    parser.add_argument("--torch-views", type=int, default=4, help="views per torch measurement (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: theirs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    rows = []
    for kind in ("object", "room"):
        for supersample in (1, 2):
            for backend in ("loop", "batched", "numba"):
                n = args.views if backend == "numba" else args.torch_views
                rows.append(measure(kind, backend, supersample, args.size, n))
                base = next(r for r in rows if r["kind"] == kind and r["supersample"] == supersample
                            and r["backend"] == "loop")
                rows[-1]["speedup_vs_loop"] = rows[-1]["views_per_s"] / base["views_per_s"]

    print("| scene | prims | supersample | backend | views/s | CPU ms/view | vs loop |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['primitives']} | {r['supersample']}x{r['supersample']} | {r['backend']} | "
              f"{r['views_per_s']:.1f} | {r['cpu_ms_per_view']:.0f} | {r['speedup_vs_loop']:.1f}x |")
    env = dict(torch=torch.__version__, numba=numba.__version__, torch_threads=torch.get_num_threads(),
               numba_threads=numba.get_num_threads(), cpus=os.cpu_count(), machine=platform.processor(),
               load_average=os.getloadavg())
    print(f"\n{args.size}x{args.size}; torch threads {env['torch_threads']}, numba threads {env['numba_threads']}, "
          f"{env['cpus']} CPUs, load average {env['load_average'][0]:.1f}")
    with atomic_open(args.out) as f:
        json.dump(dict(benchmark="synth_speed", environment=env, results=rows), f, indent=2)


if __name__ == "__main__":
    main()
