"""Out-of-core splat rendering: a synthetic SH-3 3DGS PLY larger than the memory budget, rendered (1280 x 720 by
default) by ``render_out_of_core`` (streamed from the file), with peak resident memory and seconds per frame; the
in-memory render beside it where the file fits.

Scene: a "city" of ``--gaussians`` Gaussians uniform in a 200 m x 200 m x 10 m slab (standard deviations 5 to 30
cm, random rotations, opacities ``sigmoid(N(0, 2))``, SH degree 3), written streaming in gsplat's layout (no
normals, 59 float32 = 236 bytes a Gaussian) to ``--dir``. The camera looks straight down from 60 m over the middle
with a 50-degree horizontal field of view, an aerial view of a few blocks: most of the file lies outside its
frustum. Each measured run is a fresh process (so its peak resident set, ``VmHWM``, is its own), timed per frame
after one warm-up frame that compiles nothing new (numba's caches are on disk) but pulls the file into the page
cache when it fits there. The PLY is deleted at the end unless ``--keep``.

    python bench/splat_out_of_core.py --gaussians 2000000 --budget-gib 0.25 --compare   # with the in-memory render
    python bench/splat_out_of_core.py --gaussians 2000000 --budget-gib 1 --compare --width 1920 --height 1080
    python bench/splat_out_of_core.py --gaussians 100000000 --budget-gib 4 --frames 0    # 23.6 GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from manyview.io.atomic import atomic_open

OUT = Path(__file__).resolve().parent / "results" / "splat_out_of_core.json"
FOV_X_DEG, ALTITUDE = 50.0, 60.0
BLOCK = 1 << 20


def write_city(path: Path, n: int, seed: int = 0) -> float:
    """Write the synthetic PLY block by block (never the whole in memory); seconds taken."""
    from manyview.splat.ply import property_names

    names = property_names(3, normals=False)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n" + "".join(
        f"property float {name}\n" for name in names) + "end_header\n"
    index = {name: i for i, name in enumerate(names)}
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        for lo in range(0, n, BLOCK):
            m = min(BLOCK, n - lo)
            rows = np.empty((m, len(names)), dtype=np.float32)
            rows[:, index["x"]] = rng.uniform(-100, 100, m)
            rows[:, index["y"]] = rng.uniform(-100, 100, m)
            rows[:, index["z"]] = rng.uniform(0, 10, m)
            for i in range(3):
                rows[:, index[f"scale_{i}"]] = np.log(rng.uniform(0.05, 0.3, m))
            for i in range(4):
                rows[:, index[f"rot_{i}"]] = rng.standard_normal(m, dtype=np.float32)
            rows[:, index["opacity"]] = 2 * rng.standard_normal(m, dtype=np.float32)
            for i in range(3):
                rows[:, index[f"f_dc_{i}"]] = rng.uniform(-1.5, 1.5, m)
            for i in range(45):
                rows[:, index[f"f_rest_{i}"]] = 0.1 * rng.standard_normal(m, dtype=np.float32)
            rows.tofile(f)
    os.replace(tmp, path)
    return time.perf_counter() - start


def camera(width: int, height: int):
    import math

    import torch

    from manyview.scene import Cameras

    f = 0.5 * width / math.tan(math.radians(FOV_X_DEG) / 2)
    intr = torch.tensor([f, f, width / 2, height / 2], dtype=torch.float64)
    eye = torch.tensor([0.0, 0.0, 10.0 + ALTITUDE], dtype=torch.float64)
    return Cameras.look_at(eye, torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64),
                           torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), intr, (height, width)).to(torch.float32)


def _vmhwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(args) -> None:
    """One measured run in this (fresh) process: prints a JSON line."""
    import torch

    from manyview.splat import read_ply, render
    from manyview.splat.mapped_ply import MappedGaussians
    from manyview.splat.out_of_core import GIB, render_out_of_core

    torch.set_num_threads(args.threads)
    cams = camera(args.width, args.height)
    before = _vmhwm()
    result = {"mode": args.child}
    if args.child == "streamed":
        store = MappedGaussians(args.ply)
        budget = int(args.budget_gib * GIB)
        times = []
        for _ in range(args.frames + 1):
            start = time.perf_counter()
            out = render_out_of_core(store, cams, max_memory=budget)
            times.append(time.perf_counter() - start)
        result.update(seconds_per_frame=float(np.median(times[1:] or times)), first_frame_s=times[0],
                      frames=len(times), visible=out.visible[0],
                      bands=out.bands[0], chunk=out.chunk_size, budget_bytes=budget,
                      accounted_peak_bytes=out.peak_bytes)
    else:
        start = time.perf_counter()
        g = read_ply(args.ply)
        result["read_s"] = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            out = render(g, cams, backend="cpu")
        result["seconds_per_frame"] = time.perf_counter() - start
    if args.save:
        np.save(args.save, torch.cat([out.rgb[0], out.alpha, out.depth]).numpy())
    result.update(vmhwm_bytes=_vmhwm(), vmhwm_before_bytes=before)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args, mode: str, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--ply", str(args.ply), "--budget-gib", str(args.budget_gib),
           "--frames", str(args.frames), "--threads", str(args.threads), "--width", str(args.width),
           "--height", str(args.height)] + (["--save", str(save)] if save else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[0][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaussians", type=int, default=2_000_000)
    p.add_argument("--budget-gib", type=float, default=0.25)
    p.add_argument("--frames", type=int, default=1,
                   help="timed frames after the first; 0: time the first alone (a file larger than the page cache "
                        "is read from disk every frame anyway)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--compare", action="store_true", help="also render in memory and compare the images")
    p.add_argument("--dir", type=Path, default=Path("/tmp"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", choices=("streamed", "memory"))
    p.add_argument("--ply", type=Path)
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    if args.child:
        return child(args)

    args.ply = args.dir / f"city_{args.gaussians}.ply"
    record = {"gaussians": args.gaussians, "sh_degree": 3, "size": [args.height, args.width],
              "budget_gib": args.budget_gib,
              "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
              "load_average_start": os.getloadavg()[0]}
    try:
        if not args.ply.exists():
            record["write_s"] = write_city(args.ply, args.gaussians)
        record["file_bytes"] = args.ply.stat().st_size
        print(f"{args.ply}: {record['file_bytes'] / 1e9:.2f} GB", flush=True)
        streamed_img = args.dir / "ooc_streamed.npy" if args.compare else None
        record["streamed"] = run_child(args, "streamed", streamed_img)
        print(json.dumps(record["streamed"]), flush=True)
        if args.compare:
            memory_img = args.dir / "ooc_memory.npy"
            record["memory"] = run_child(args, "memory", memory_img)
            a, b = np.load(streamed_img), np.load(memory_img)
            record["max_abs_difference"] = {"rgb": float(np.abs(a[:3] - b[:3]).max()),
                                            "alpha": float(np.abs(a[3] - b[3]).max()),
                                            "depth": float(np.abs(a[4] - b[4]).max())}
            streamed_img.unlink()
            memory_img.unlink()
            print(json.dumps(record["memory"]), record["max_abs_difference"], flush=True)
    finally:
        if not args.keep and args.ply.exists():
            args.ply.unlink()
    record["load_average_end"] = os.getloadavg()[0]
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    same = lambda r: (r["gaussians"], r["budget_gib"], r["size"]) == (args.gaussians, args.budget_gib, record["size"])
    runs = [r for r in runs if not same(r)] + [record]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        f.write(json.dumps(runs, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.out == OUT:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_table import write_table

        write_table("splat_out_of_core", table(runs),
                    heading="Out-of-core splat rendering (`bench/splat_out_of_core.py`)")


def table(runs: list[dict]) -> str:
    """The README's table: one row per run, the in-memory render as the baseline where it was run."""
    gb = lambda n: f"{n / 1e9:.2f} GB"
    rows = ["| Gaussians (SH 3) | file | size | budget | streamed: s / frame | peak RSS | chunk / bands | "
            "in the frustum | in memory: read + render s | peak RSS | max abs difference (rgb) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["gaussians"], r["size"][0])):
        s, m = r["streamed"], r.get("memory")
        memory = (f"{m['read_s']:.1f} + {m['seconds_per_frame']:.1f} | {gb(m['vmhwm_bytes'])} | "
                  f"{r['max_abs_difference']['rgb']:.1e}") if m else "(does not fit) | - | -"
        rows.append(f"| {r['gaussians']:,} | {gb(r['file_bytes'])} | {r['size'][1]} x {r['size'][0]} | "
                    f"{r['budget_gib']:g} GiB | {s['seconds_per_frame']:.1f} | {gb(s['vmhwm_bytes'])} | "
                    f"{s['chunk']:,} / {s['bands']} | {s['visible']:,} "
                    f"({100 * s['visible'] / r['gaussians']:.1f} %) | {memory} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
