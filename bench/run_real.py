"""Real-photo splat quality (issue 12 item 6): held-out PSNR on family and teddybear, and what the gap is made of.

Stages, each resumable, all under ``--root`` (default /tmp/run_real):

    python bench/run_real.py poses                       # COLMAP poses of each scene, once (the pipeline's stage)
    python bench/run_real.py train family base           # the pipeline's splat settings on those poses
    python bench/run_real.py train family exp --set exposure=true
    python bench/run_real.py diagnose family base        # the causes of the held-out gap, measured
    python bench/run_real.py pipeline family             # `manyview run PHOTOS --out ROOT/family_run`, defaults
    python bench/run_real.py table                       # bench/results/run_real.json and the README table

``train`` uses the splat settings ``manyview run`` passes by default (7000 steps, every 8th photo held out,
480 px wide, the densification schedule scaled to the run), with ``--set name=value`` overriding
SplatTrainConfig fields (``densify.name=value`` for the schedule). Its baseline in the same table is the run
named ``base``.

``diagnose`` separates the causes of the held-out gap on a trained run, each by a measurement:

- exposure: held-out PSNR with each held-out render's affine colour transform fitted to its photo (least
  squares, 12 numbers per image);
- pose error: the held-out camera's se(3) correction fitted to its photo with the Gaussians frozen (test-time
  pose optimisation, as the pose-refinement papers evaluate); PSNR after it, and the size of the correction;
- unseen regions: every held-out pixel's rendered surface point (expected depth) projected into the training
  cameras; PSNR on pixels that no training photo sees (or that render empty) against those that one sees;
- view-dependent colour: held-out PSNR of the same Gaussians with their spherical harmonics cut to the DC term;
- training views: PSNR of a few training views (with their learned colour transform / pose), the gap's other end.
Lens distortion is reported from the poses stage (the estimated radial coefficient and the pixel shift it makes
at the image corner, which the undistortion removes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real"
SCENES = ("family", "teddybear")
RESULTS = REPO / "bench" / "results" / "run_real.json"
README = REPO / "bench" / "README.md"


def photos_of(scene: str) -> list[Path]:
    return sorted(p for p in (DATA / scene).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


# --------------------------------------------------------------------------------------------------- stages
def cmd_poses(args) -> None:
    from manyview.pipeline import stages
    from manyview.pipeline.config import RunConfig

    for scene in args.scenes:
        out = args.root / f"{scene}_poses"
        if out.exists():
            print(f"{scene}: poses exist in {out}")
            continue
        info = stages.poses([str(p) for p in photos_of(scene)], out, RunConfig(), progress=False)
        print(scene, json.dumps(info), flush=True)


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def training_config(overrides: list[str]):
    """The splat settings ``manyview run`` passes by default (7000 steps, every 8th photo held out, checkpoints
    every 500 steps, the schedule scaled to the run) with ``name=value`` overrides."""
    from manyview.splat.trainer import SplatTrainConfig

    cfg = SplatTrainConfig(iterations=7000, test_every=8, seed=0, checkpoint_every=500, scale_schedule=True)
    densify = {}
    top = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name.startswith("densify."):
            densify[name.split(".", 1)[1]] = parse_value(value)
        else:
            top[name] = parse_value(value)
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(top) - known)
    if unknown:
        raise SystemExit(f"unknown SplatTrainConfig fields: {unknown}")
    if densify:
        top["densify"] = replace(cfg.densify, **densify)
    if "background" in top:
        top["background"] = tuple(top["background"])
    return replace(cfg, **top)


def cmd_train(args) -> None:
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import SplatTrainer

    torch.manual_seed(0)
    cfg = training_config(args.set)
    cfg = replace(cfg, eval_every=args.eval_every)
    out = args.root / f"{args.scene}_{args.name}"
    views, points = load_training_views(args.root / f"{args.scene}_poses", 480)
    trainer = SplatTrainer(views, out, cfg, points=points)
    print(f"{args.scene}/{args.name}: {len(trainer.train_ids)} train, {len(trainer.test_ids)} held out, "
          f"{views.width}x{views.height}, {len(trainer.params['means'])} initial Gaussians, options {args.set}",
          flush=True)
    t0 = time.perf_counter()
    result = trainer.train(resume=True, show_progress=False)
    record = {"scene": args.scene, "name": args.name, "options": args.set, "wall_s": time.perf_counter() - t0,
              "psnr": result["psnr"], "psnr_exposure_fitted": result["psnr_exposure_fitted"],
              "ssim": result["ssim"], "gaussians": result["gaussians"], "train_seconds": result["train_seconds"],
              "history": result["history"]}
    print(json.dumps(record), flush=True)


# --------------------------------------------------------------------------------------------------- diagnose
def fit_pose(gaussians, camera, photo, steps: int, extent: float, lr: float = 2e-3):
    """The se(3) correction of one camera fitted to its photo with the Gaussians frozen: (delta (6,), render)."""
    from manyview.splat import render
    from manyview.splat.pose_refine import PoseRefinement

    pose = PoseRefinement(1, extent)
    opt = torch.optim.Adam(pose.parameters(), lr=lr)
    frozen = gaussians.detach()
    best = (math.inf, torch.zeros(6))
    for _ in range(steps):
        opt.zero_grad()
        out = render(pose(frozen, camera.c2w[0], 0), camera, background=torch.zeros(3))
        loss = (out.rgb[0] - photo).abs().mean()
        if loss.item() < best[0]:
            best = (loss.item(), pose.per_view[0].detach().clone())
        loss.backward()
        opt.step()
    with torch.no_grad():
        pose.per_view[0].copy_(best[1])
        rgb = render(pose(frozen, camera.c2w[0], 0), camera, background=torch.zeros(3)).rgb[0].clamp(0, 1)
    return best[1], rgb


def seen_mask(out_depth, out_alpha, camera, train_cams, height: int, width: int) -> torch.Tensor:
    """(H, W) whether each pixel's rendered surface point lies inside some training photo (in front of it)."""
    fx, fy, cx, cy = camera.fxfycxcy[0].double().tolist()
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    z = out_depth.double()
    local = torch.stack([(xs - cx) / fx * z, (ys - cy) / fy * z, z, torch.ones_like(z)], -1).reshape(-1, 4)
    world = local @ camera.c2w[0].double().T
    seen = torch.zeros(height * width, dtype=torch.bool)
    for k in range(len(train_cams)):
        w2c = torch.linalg.inv(train_cams.c2w[k].double())
        p = world @ w2c.T
        tfx, tfy, tcx, tcy = train_cams.fxfycxcy[k].double().tolist()
        zz = p[:, 2]
        u, v = tfx * p[:, 0] / zz.clamp_min(1e-9) + tcx, tfy * p[:, 1] / zz.clamp_min(1e-9) + tcy
        seen |= (zz > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return seen.reshape(height, width) & (out_alpha > 0.5)


def masked_psnr(pred, gt, mask) -> float | None:
    if mask.sum() == 0:
        return None
    mse = (pred - gt).square().mean(0)[mask].mean().item()
    return -10 * math.log10(max(mse, 1e-12))


def cmd_diagnose(args) -> None:
    from manyview.metrics.image import psnr
    from manyview.splat import read_ply, render
    from manyview.splat.appearance import exposure_fitted
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import scene_extent, split_views

    run = args.root / f"{args.scene}_{args.name}"
    views, _ = load_training_views(args.root / f"{args.scene}_poses", 480)
    if (run / "splat.ply").is_file():
        g, step = read_ply(run / "splat.ply"), json.loads((run / "eval.json").read_text())["step"]
    else:  # a run still going: its latest checkpoint
        from safetensors.torch import load_file

        from manyview.splat.gaussians import Gaussians

        latest = sorted((run / "checkpoints").glob("step_*"))[-1]
        g, step = Gaussians.from_dict(load_file(str(latest / "gaussians.safetensors"))), int(latest.name[5:])
    train_ids, test_ids = split_views(len(views), 8)
    extent = scene_extent(views)
    h, w = views.height, views.width
    summary = json.loads((args.root / f"{args.scene}_poses" / "summary.json").read_text())
    rows = []
    for i in test_ids:
        cam, photo = views.cameras[i:i + 1], views.images[i]
        out = render(g, cam, background=torch.zeros(3))
        pred = out.rgb[0].clamp(0, 1)
        fitted = exposure_fitted(pred[None], photo[None])[0]
        delta, posed = fit_pose(g, cam, photo, args.pose_steps, extent)
        posed_fitted = exposure_fitted(posed[None], photo[None])[0]
        seen = seen_mask(out.depth[0], out.alpha[0], cam, views.cameras[train_ids], h, w)
        row = {"name": views.names[i], "index": i,
               "psnr": float(psnr(pred[None], photo[None])[0]),
               "psnr_exposure_fitted": float(psnr(fitted[None], photo[None])[0]),
               "psnr_pose_fitted": float(psnr(posed[None], photo[None])[0]),
               "psnr_pose_and_exposure_fitted": float(psnr(posed_fitted[None], photo[None])[0]),
               "pose_correction_deg": math.degrees(delta[:3].norm().item()),
               "pose_correction_translation_x_extent": delta[3:].norm().item(),
               "seen_fraction": float(seen.float().mean()),
               "psnr_seen": masked_psnr(pred, photo, seen), "psnr_unseen": masked_psnr(pred, photo, ~seen),
               "psnr_seen_pose_and_exposure_fitted": masked_psnr(posed_fitted, photo, seen)}
        # view-dependent colour that held-out directions get wrong: the same Gaussians with their SH cut to DC
        row["psnr_sh_dc_only"] = float(psnr(render(g, cam, background=torch.zeros(3), sh_degree=0).rgb.clamp(0, 1),
                                            photo[None])[0])
        k1 = distortion_summary(summary, views.width).get("k1")
        if k1 is not None:  # what the estimated lens distortion would cost if it were left in the photos
            row["psnr_if_distortion_ignored"] = float(psnr(radial_warp(pred, cam, k1)[None], photo[None])[0])
        rows.append(row)
        if args.images:  # render | photo | seen mask, for looking at
            from manyview.io.image_writers import write_image

            strip = torch.cat([pred, photo, seen.float().expand(3, h, w)], dim=2)
            write_image(run / f"diagnose_{Path(views.names[i]).stem}.png", strip)
        print(json.dumps(row), flush=True)
    views_json = (json.loads((run / "views.json").read_text()) if (run / "views.json").is_file()
                  and (run / "splat.ply").is_file() else None)
    train_rows = []
    for i in train_ids[::max(1, len(train_ids) // 6)][:6]:
        cam = views.cameras[i:i + 1]
        if views_json is not None and views_json["pose_refine"]:
            cam = replace(cam, c2w=torch.tensor(views_json["views"][i]["c2w"], dtype=cam.c2w.dtype)[None])
        pred = render(g, cam, background=torch.zeros(3)).rgb[0]
        if views_json is not None and views_json["exposure"]:
            from manyview.splat.appearance import apply_colour_transform

            pred = apply_colour_transform(pred, torch.tensor(views_json["views"][i]["colour_transform"]))
        train_rows.append(float(psnr(pred.clamp(0, 1)[None], views.images[i][None])[0]))
    mean = lambda key: (sum(r[key] for r in rows if r[key] is not None)  # noqa: E731
                        / max(1, sum(r[key] is not None for r in rows)))
    result = {"scene": args.scene, "name": args.name, "step": step, "pose_steps": args.pose_steps, "held_out": rows, "train_psnr": sum(train_rows) / len(train_rows),
              "distortion": distortion_summary(summary, views.width),
              **{k: mean(k) for k in ("psnr", "psnr_exposure_fitted", "psnr_pose_fitted",
                                      "psnr_pose_and_exposure_fitted", "pose_correction_deg",
                                      "pose_correction_translation_x_extent", "seen_fraction", "psnr_seen",
                                      "psnr_unseen", "psnr_seen_pose_and_exposure_fitted",
                                      "psnr_if_distortion_ignored", "psnr_sh_dc_only") if k in rows[0]}}
    (run / f"diagnose_{step:06d}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "held_out"}), flush=True)


def radial_warp(image, camera, k1: float):
    """``image`` (3, H, W) resampled at x (1 + k1 |x|^2) (normalised coordinates): the shift a SIMPLE_RADIAL lens
    of coefficient ``k1`` makes, i.e. the photo as it would be had it not been undistorted."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    fx, fy, cx, cy = camera.fxfycxcy[0].double().tolist()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    x, y = (xs - cx) / fx, (ys - cy) / fy
    factor = 1 + k1 * (x * x + y * y)
    u, v = x * factor * fx + cx, y * factor * fy + cy
    grid = torch.stack([u / w * 2 - 1, v / h * 2 - 1], -1)[None].to(image.dtype)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def distortion_summary(summary: dict, width: int) -> dict:
    """The estimated radial coefficient and the shift it makes at the image corner, in pixels at ``width``."""
    params = summary.get("camera_params") or []
    model = summary.get("camera_model")
    if model not in ("SIMPLE_RADIAL", "RADIAL") or len(params) < 4:
        return {"camera_model": model, "camera_params": params}
    f, cx, cy, k1 = params[:4]
    r = math.hypot(cx, cy) / f  # the corner, normalised
    shift = abs(k1) * r ** 3 * f  # |k1 r^2| x r x f pixels at the photo's undistorted size
    full_width = summary["image_size"][1]
    return {"camera_model": model, "k1": k1, "corner_shift_px": shift * width / full_width}


# --------------------------------------------------------------------------------------------------- pipeline
def cmd_pipeline(args) -> None:
    out = args.root / f"{args.scene}_run"
    cmd = [sys.executable, "-m", "manyview", "run", str(DATA / args.scene), "--out", str(out), *args.extra]
    if (out / "run.json").is_file():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    record = {"scene": args.scene, "command": " ".join(cmd[2:]), "wall_s": time.perf_counter() - t0,
              "psnr": metrics["psnr"], "ssim": metrics["ssim"], "train_psnr": metrics["train_psnr"]}
    (out / "bench.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


# --------------------------------------------------------------------------------------------------- table
def cmd_table(args) -> None:
    runs = []
    for scene in SCENES:
        for run in sorted(args.root.glob(f"{scene}_*")):
            if run.name.endswith(("_poses", "_run")):
                continue
            found = sorted(run.glob("diagnose_*.json"))  # the latest step's
            diag = json.loads(found[-1].read_text()) if found else {}
            ev_file = run / "eval.json"
            if ev_file.is_file():
                ev = json.loads(ev_file.read_text())
            elif diag:  # still training: its latest diagnosed checkpoint
                ev = unfinished_record(run, diag)
            else:
                continue
            runs.append({"scene": scene, "name": run.name[len(scene) + 1:], "psnr": ev["psnr"],
                         "psnr_exposure_fitted": ev.get("psnr_exposure_fitted"), "ssim": ev["ssim"],
                         "gaussians": ev["gaussians"], "train_seconds": ev["train_seconds"],
                         "steps": ev["step"], "history": ev.get("history"),
                         "options": {k: v for k, v in ev["config"].items() if k in (
                             "exposure", "pose_refine", "far_points", "iterations", "lr_pose", "lr_exposure",
                             "scale_schedule", "random_background")},
                         "diagnose": {k: v for k, v in diag.items() if k != "held_out"} or None})
        bench = args.root / f"{scene}_run" / "bench.json"
        if bench.is_file():
            runs.append({"scene": scene, "name": "manyview run", **json.loads(bench.read_text()),
                         **run_stages(args.root / f"{scene}_run")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "runs": runs}, indent=1))
    tmp.replace(RESULTS)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readme_table import write_table

    write_table("run_real", markdown_table(runs), heading="Real photos (`bench/run_real.py`)")
    print(json.dumps(runs, indent=1))


def run_stages(run_dir: Path) -> dict:
    """What a `manyview run` folder's stages recorded: seconds per stage (summed over resumed sessions by the
    stages themselves), the splat's steps and Gaussians, the held-out PSNR with exposure fitted, the options."""
    stages = {}
    for name in ("poses", "splat", "evaluate", "orbit"):
        f = run_dir / name / "stage.json"
        if f.is_file():
            stages[name] = json.loads(f.read_text())
    splat = stages.get("splat", {}).get("info", {})
    options = json.loads((run_dir / "run.json").read_text()).get("options", {}) if (run_dir / "run.json").is_file() \
        else {}
    return {"stage_seconds": {k: v["seconds"] for k, v in stages.items()}, "steps": splat.get("steps"),
            "gaussians": splat.get("gaussians"), "resumed_from": splat.get("resumed_from"),
            "psnr_exposure_fitted": stages.get("evaluate", {}).get("info", {}).get("psnr_exposure_fitted"),
            "options": {k: options[k] for k in ("exposure", "far_points") if k in options}}


def unfinished_record(run: Path, diag: dict) -> dict:
    """eval.json's fields for a run still going, from its checkpoint at the diagnosed step."""
    from manyview.io.tensor_files import read_pickle

    checkpoint = run / "checkpoints" / f"step_{diag['step']:06d}"
    latest = sorted((run / "checkpoints").glob("step_*"))  # its settings and history so far
    state = read_pickle(latest[-1] / "state.pt", what="checkpoint state") if latest else {}
    from safetensors import safe_open

    gaussians = None
    if checkpoint.is_dir():
        with safe_open(str(checkpoint / "gaussians.safetensors"), "pt") as f:
            gaussians = f.get_slice("means").get_shape()[0]
    config = json.loads(state["config"]) if "config" in state else {}
    return {"psnr": diag["psnr"], "psnr_exposure_fitted": diag["psnr_exposure_fitted"], "ssim": None,
            "gaussians": gaussians, "train_seconds": None, "step": diag["step"],
            "history": json.loads(state["history"]) if "history" in state else None, "config": config}


def markdown_table(runs: list[dict]) -> str:
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| scene | run | options | steps | Gaussians | held-out PSNR | exposure fitted | SSIM | train PSNR | "
             "pose fitted | pose + exposure fitted | seen / unseen px PSNR (seen %) | SH DC only | train s | "
             "PSNR by step |", "|" + "---|" * 15]
    for r in runs:
        if r["name"] == "manyview run":
            options = ", ".join(f"{k}={v}" for k, v in (r.get("options") or {}).items())
            seconds = r.get("stage_seconds") or {}
            total = f"{sum(seconds.values()):.0f} (stages)" if seconds else f"{r['wall_s']:.0f} (wall)"
            gaussians = "-" if r.get("gaussians") is None else format(r["gaussians"], ",")
            lines.append(f"| {r['scene']} | `manyview run` (defaults) | {options or '-'} | {r.get('steps') or '-'} | "
                         f"{gaussians} | **{f(r['psnr'])}** | {f(r.get('psnr_exposure_fitted'))} | "
                         f"{f(r['ssim'], 3)} | {f(r.get('train_psnr'))} | - | - | - | - | {total} | - |")
            continue
        d = dict(r["diagnose"] or {})
        if not d.get("pose_steps"):  # no pose was fitted
            d.pop("psnr_pose_fitted", None), d.pop("psnr_pose_and_exposure_fitted", None)
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items()
                            if k in ("exposure", "pose_refine", "far_points") and v) or "pipeline defaults"
        history = ", ".join(f"{h['step']}: {h['psnr']:.2f}" for h in r["history"] or [])
        seen = (f"{f(d.get('psnr_seen'))} / {f(d.get('psnr_unseen'))} ({100 * d['seen_fraction']:.0f} %)"
                if d.get("seen_fraction") is not None else "-")
        steps = r["steps"] if r["steps"] == r["options"].get("iterations") else f"{r['steps']} (stopped)"
        lines.append(f"| {r['scene']} | {r['name']} | {options} | {steps} | {'-' if r['gaussians'] is None else format(r['gaussians'], ',')} | "
                     f"**{f(r['psnr'])}** | {f(r['psnr_exposure_fitted'])} | {f(r['ssim'], 3)} | "
                     f"{f(d.get('train_psnr'))} | {f(d.get('psnr_pose_fitted'))} | "
                     f"{f(d.get('psnr_pose_and_exposure_fitted'))} | {seen} | {f(d.get('psnr_sh_dc_only'))} | "
                     f"{f(r['train_seconds'], 0)} | {history} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/run_real"))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("poses")
    s.add_argument("scenes", nargs="*", default=list(SCENES))
    s = sub.add_parser("train")
    s.add_argument("scene", choices=SCENES)
    s.add_argument("name")
    s.add_argument("--set", action="append", default=[], help="SplatTrainConfig field=value (JSON values)")
    s.add_argument("--eval-every", type=int, default=1000)
    s = sub.add_parser("diagnose")
    s.add_argument("scene", choices=SCENES)
    s.add_argument("name")
    s.add_argument("--pose-steps", type=int, default=150)
    s.add_argument("--images", action="store_true", help="write render | photo | seen strips beside the JSON")
    s = sub.add_parser("pipeline")
    s.add_argument("scene", choices=SCENES)
    s.add_argument("extra", nargs="*", help="more `manyview run` options")
    sub.add_parser("table")
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    {"poses": cmd_poses, "train": cmd_train, "diagnose": cmd_diagnose, "pipeline": cmd_pipeline,
     "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
