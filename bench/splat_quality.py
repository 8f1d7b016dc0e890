"""Held-out quality of ``manyview splat`` training on two scenes, with wall time (CPU backend unless CUDA+gsplat).

(a) synthetic: ``manyview.synth`` object scene, 256x256, 35 views (every 8th held out -> 30 train / 5 test),
    initialised from the fused ground-truth depth points; goal: held-out PSNR >= 32 dB. The views are rendered
    with 4 x 4 supersampling, as a camera integrates light over each pixel: one ray per pixel aliases the checker
    edges differently in every view, and that aliasing alone is 28 dB PSNR away from the area-sampled image.
(b) family: /work/shared/data/real/family (29 photos, 854x480), poses and points from manyview's own
    ``run_colmap_sfm`` (cached in OUT/family_dataset), trained at <= 480 px wide; goal: held-out PSNR >= 24 dB.

    python bench/splat_quality.py --out bench/results/splat_quality --iterations 300 --eval-every 100
    python bench/splat_quality.py --scenes family --iterations 30000 --eval-every 1000   # the full run

Writes OUT/results.json and OUT/results.md (a table), plus each run's folder (splat.ply, eval.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from manyview.io.atomic import atomic_open

FAMILY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "family"
GOALS = {"synthetic": 32.0, "family": 24.0}


def synthetic_data(out: Path, size: int, views: int, supersample: int):
    from manyview.io.dataset import write_dataset
    from manyview.synth import generate

    folder = out / ("synthetic_dataset" if supersample == 1 else f"synthetic_dataset_ss{supersample}")
    if not (folder / "manyview.json").is_file():
        _, v = generate(0, kind="object", num_views=views, height=size, width=size, supersample=supersample)
        write_dataset(folder, v, points=v.point_cloud(max_points=None))
    return folder


def family_data(out: Path, max_width: int):
    """A manyview dataset of the family photos with COLMAP poses and points (SfM runs once, then is cached)."""
    from manyview.io.dataset import write_dataset
    from manyview.io.images import load_images
    from manyview.recon.sfm import run_colmap_sfm
    from manyview.scene import Views

    folder = out / "family_dataset"
    if (folder / "manyview.json").is_file():
        return folder, json.loads((out / "family_sfm.json").read_text())
    if not FAMILY.is_dir():
        sys.exit(f"missing {FAMILY}: the family photos are needed for the real-data run")
    start = time.perf_counter()
    sfm = run_colmap_sfm(FAMILY, work_dir=out / "family_sfm", num_threads=2)
    views, _ = load_images(FAMILY)
    reg = sfm.registered
    cams = sfm.cameras[reg]
    if tuple(cams.image_size[0].tolist()) != (views.height, views.width):
        cams = cams.resized(views.height, views.width)
    names = [n for n, r in zip(sfm.names, reg.tolist()) if r]
    write_dataset(folder, Views(images=views.images[reg], cameras=cams, names=names), points=sfm.points)
    info = {"registered": sfm.num_registered, "images": len(sfm.names), "points": len(sfm.points.xyz),
            "mean_reprojection_error_px": sfm.mean_reprojection_error, "sfm_seconds": time.perf_counter() - start}
    with atomic_open(out / "family_sfm.json", "w") as f:
        json.dump(info, f, indent=2)
    return folder, info


def train(name: str, dataset: Path, out: Path, args) -> dict:
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

    views, points = load_training_views(dataset, args.max_width)
    sh_degree = args.synthetic_sh_degree if name == "synthetic" else args.sh_degree
    config = SplatTrainConfig(iterations=args.iterations, eval_every=args.eval_every, sh_degree=sh_degree,
                              checkpoint_every=args.checkpoint_every, max_init_points=args.max_init_points,
                              scale_schedule=True)  # as `manyview splat` does
    trainer = SplatTrainer(views, out / f"{name}_run", config, points=points)
    initial = trainer.evaluate(with_lpips=False)["psnr"]
    n0 = len(trainer.params["means"])
    start = time.perf_counter()
    result = trainer.train(resume=args.resume)
    wall = time.perf_counter() - start
    return {"scene": name, "size": f"{views.height}x{views.width}", "train_views": len(trainer.train_ids),
            "test_views": len(trainer.test_ids), "initial_gaussians": n0, "gaussians": result["gaussians"],
            "iterations": result["step"], "initial_psnr": initial, "psnr": result["psnr"], "ssim": result["ssim"],
            "lpips": result["lpips"], "sh_degree": sh_degree,
            "supersample": args.synthetic_supersample if name == "synthetic" else None,
            "history": result["history"], "wall_seconds": wall,
            "seconds_per_iteration": result["seconds_per_step"], "goal_psnr": GOALS[name],
            "goal_met": result["psnr"] >= GOALS[name], "threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    header = ("| scene | size | SH | train/test | iters | Gaussians (init -> end) | PSNR init -> end (goal) | SSIM | "
              "s/iter | wall s | PSNR by iteration |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hist = ", ".join(f"{h['step']}: {h['psnr']:.2f}" for h in r["history"])
        lines.append(f"| {r['scene']} | {r['size']} | {r.get('sh_degree', 3)} | {r['train_views']}/{r['test_views']} | {r['iterations']} | "
                     f"{r['initial_gaussians']} -> {r['gaussians']} | {r['initial_psnr']:.2f} -> {r['psnr']:.2f} "
                     f"({r['goal_psnr']:.0f}) | {r['ssim']:.3f} | {r['seconds_per_iteration']:.3f} | "
                     f"{r['wall_seconds']:.0f} | {hist} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/splat_quality"))
    parser.add_argument("--scenes", nargs="+", default=["synthetic", "family"], choices=["synthetic", "family"])
    parser.add_argument("--iterations", type=int, default=30_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--max-init-points", type=int, default=100_000)
    parser.add_argument("--max-width", type=int, default=480)
    parser.add_argument("--synthetic-size", type=int, default=256)
    parser.add_argument("--synthetic-views", type=int, default=35)
    parser.add_argument("--synthetic-supersample", type=int, default=4,
                        help="sub-pixel samples per side for the synthetic views (1: one aliased ray per pixel)")
    parser.add_argument("--sh-degree", type=int, default=3, help="SH degree of the real scene")
    parser.add_argument("--synthetic-sh-degree", type=int, default=0,
                        help="SH degree of the synthetic scene (default 0: its surfaces are Lambertian, so colour "
                             "does not depend on the view; higher degrees fit the training views' colours instead "
                             "of geometry)")
    parser.add_argument("--resume", action="store_true", help="continue each run from its last checkpoint")
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into bench/README.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, extra = [], {}
    for name in args.scenes:
        if name == "synthetic":
            dataset = synthetic_data(args.out, args.synthetic_size, args.synthetic_views, args.synthetic_supersample)
        else:
            dataset, extra["family_sfm"] = family_data(args.out, args.max_width)
        rows.append(train(name, dataset, args.out, args))
        print(table(rows[-1:]), flush=True)
    with atomic_open(args.out / "results.json", "w") as f:
        json.dump({"runs": rows, **extra}, f, indent=2)
    with atomic_open(args.out / "results.md", "w") as f:
        f.write(table(rows) + "\n")
    print(table(rows))
    if not args.no_readme:
        from readme_table import write_table

        name = "splat_quality_" + "_".join(args.scenes)
        print(f"updated {write_table(name, table(rows), heading=f'Splat training quality (`{name}`)')}")


if __name__ == "__main__":
    main()
