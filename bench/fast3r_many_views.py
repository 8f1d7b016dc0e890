"""Fast3R on many views in one pass: N views of a synthetic orbit at 224 x 224, tiny model, on this machine.

Measures the whole ``manyview.recon.reconstruct`` call (one forward pass over all N views + camera recovery) and
its peak memory, and compares it with the same call at N / 8 views in the same run, so the growth is visible:

    python bench/fast3r_many_views.py [--views 1000] [--size 224] [--preset tiny] [--out bench/results/fast3r_many_views.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from manyview import synth
from manyview.io.atomic import atomic_open
from manyview.models.fast3r import Fast3R
from manyview.profiling import MemoryMeter
from manyview.recon.reconstruct import reconstruct


def run(model, images) -> dict:
    with MemoryMeter("cpu") as meter:
        start = time.perf_counter()
        rec = reconstruct(images, model, progress=False)
        seconds = time.perf_counter() - start
    return {"views": len(images), "seconds": round(seconds, 2),
            "peak_memory_gib": round(meter.increase_bytes / 2**30, 3),
            "points": len(rec.points), "finite_cameras": bool(torch.isfinite(rec.cameras.c2w).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fast3r_many_views.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Fast3R(args.preset).eval()
    _, views = synth.generate(0, kind="object", num_views=args.views, height=args.size, width=args.size)
    rows = [run(model, views.images[: max(2, args.views // 8)]), run(model, views.images)]
    for row in rows:
        print(f"N={row['views']:5d}: {row['seconds']:8.1f} s, peak +{row['peak_memory_gib']:.2f} GiB, "
              f"{row['points']} points, cameras finite: {row['finite_cameras']}", flush=True)
    result = {"benchmark": "fast3r_many_views", "size": args.size, "preset": args.preset, "rows": rows,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    with atomic_open(args.out) as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
