"""Gaussian splatting on the CPU: the numba backend against the float64 PyTorch reference, forward + backward.

Scenes (the same inputs for both renderers; loss = sum of rgb, alpha and depth times fixed random weights):

- ``box-100k``, ``box-1M``: 3DGS's random initialisation (``manyview.splat.random_in_box``: uniform points in
  [-1, 1]^3, scales from the 3 nearest neighbours, opacity 0.1, random colours, SH degree 3), one 1280 x 720
  camera 2.6 units from the box centre, so the box fills most of the frame. Opacity 0.1 is the worst case for
  early termination (a pixel composites ~190 Gaussians); ``box-1M-opaque`` repeats 1M with opacity 0.5.
- ``garden``: the real SfM point cloud ``../shared/data/splat/garden_points.npz`` (138,766 points, 3 cameras,
  648 x 420) initialised the same way (``from_points``).

The reference is dense (every pixel against every Gaussian), so at these sizes it runs on chunks of pixels and
is timed on a sample of chunks: its figure is the projection (forward + backward, measured whole) plus the mean
chunk time times the number of chunks, an extrapolation, and the table says so. A second reference figure,
"culled", runs the same reference code per 16 x 16 tile on only the Gaussians whose extent overlaps the tile (what
a sensible pure-PyTorch tiled renderer does), extrapolated from a random sample of tiles. The sampled pixels are
also compared with the CPU backend's.

Time is wall clock (median of repeats) on a shared 2-core machine; the CPU backend's stages come from
``manyview.splat._cpu.profile()``. The "floor" column is the arithmetic lower bound: contributing pixel-Gaussian
pairs x the floating-point operations a pair needs at minimum (forward 30, backward 60) at the machine's float32
peak (the rasteriser's precision: cores x 2 vector FMA pipes x 8 float32 lanes x 2 flops x clock), i.e. what no
CPU kernel can beat.

    python bench/splat_raster.py            # all scenes (about 10 minutes on 2 cores)
    python bench/splat_raster.py --quick    # 20k Gaussians at 640 x 360 and the garden, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

from manyview.io.atomic import atomic_open
from manyview.scene import Cameras, PointCloud
from manyview.splat import _cpu, _reference, from_points, random_in_box, render
from manyview.splat.backend import shade

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "splat" / "garden_points.npz"
FLOPS_PER_PAIR = 30 + 60  # forward: power, exp, blend of 4 channels; backward: the same plus 10 gradients


def box_scene(n: int, width: int, height: int, opacity: float):
    g = random_in_box(n, opacity=opacity, seed=0)
    f = 900.0 * width / 1280
    cams = Cameras.look_at(torch.tensor([[0.0, -0.3, -2.6]]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]),
                           torch.tensor([f, f, width / 2, height / 2]), (height, width))
    return g, cams


def garden_scene():
    if not DATA.exists():
        raise SystemExit(f"{DATA}: missing; the garden scene needs the shared data folder beside the checkout")
    d = np.load(DATA)
    g = from_points(PointCloud(torch.from_numpy(d["means3d"]).double(),
                               torch.from_numpy(d["colors"]).double() / 255.0))
    K = torch.from_numpy(d["Ks"]).float()
    fxfycxcy = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], -1)
    cams = Cameras.from_w2c(fxfycxcy, torch.from_numpy(d["viewmats"]).float(), (int(d["height"]), int(d["width"])))
    return g, cams


def weights_for(cams: Cameras, seed: int = 0):
    C = len(cams)
    h, w = (int(v) for v in cams.image_size[0])
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(C, 3, h, w, generator=gen), torch.randn(C, h, w, generator=gen),
            torch.randn(C, h, w, generator=gen) * 0.1)


def loss_of(rgb, alpha, depth, w):
    return (rgb * w[0]).sum() + (alpha * w[1]).sum() + (depth * w[2]).sum()


def time_cpu(g, cams, w, repeats: int):
    fwd, bwd, cpu_s, stages = [], [], [], []
    for i in range(repeats + 1):
        gi = g.clone().requires_grad_()
        with _cpu.profile() as prof:
            c0, t0 = time.process_time(), time.perf_counter()
            out = render(gi, cams, backend="cpu")
            t1 = time.perf_counter()
            loss_of(out.rgb, out.alpha, out.depth, w).backward()
            t2, c1 = time.perf_counter(), time.process_time()
        if i > 0:  # the first run loads the compiled kernels
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            cpu_s.append(c1 - c0)
            stages.append(dict(prof))
    total = [a + b for a, b in zip(fwd, bwd)]
    k = int(np.argsort(total)[len(total) // 2])  # the median run (upper median for an even count)
    work = {}
    proj = _cpu.project(g, cams)
    feats = torch.cat([shade(g, cams, g.sh_degree), proj.depths[..., None]], -1)
    h, wd = (int(v) for v in cams.image_size[0])
    _cpu.rasterize(proj, feats.detach(), h, wd, 16, work)
    return dict(forward_s=statistics.median(fwd), backward_s=statistics.median(bwd), total_s=total[k],
                cpu_seconds=statistics.median(cpu_s), stages_s=stages[k], work=work), out


def reference_sample(g, cams, w, *, culled: bool, samples: int, chunk_px: int, seed: int = 0):
    """Reference forward + backward on a random sample of pixel chunks (dense) or 16 x 16 tiles (culled);
    returns the extrapolated full-image seconds, and the sampled pixels' rgb for comparison."""
    h, wd = (int(v) for v in cams.image_size[0])
    C = len(cams)
    g64 = g.to(torch.float64).requires_grad_()
    cams64 = cams.to(torch.float64)
    t0 = time.perf_counter()
    proj = _reference.project(g64, cams64)
    feats = torch.cat([shade(g64, cams64, g64.sh_degree), proj.depths[..., None]], -1)
    leaves = [t.detach().requires_grad_() for t in (proj.means2d, proj.conics, proj.opacities, feats)]
    t_project_fwd = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    if culled:
        tiles_x, tiles_y = math.ceil(wd / 16), math.ceil(h / 16)
        units = tiles_x * tiles_y * C
        picks = rng.choice(units, size=min(samples, units), replace=False)
    else:
        units = C * math.ceil(h * wd / chunk_px)
        picks = rng.choice(units, size=min(samples, units), replace=False)
    times, compared = [], []
    for u in picks:
        if culled:
            c, t = divmod(int(u), tiles_x * tiles_y)
            ty, tx = divmod(t, tiles_x)
            ys, xs = torch.meshgrid(torch.arange(ty * 16, min(ty * 16 + 16, h)), torch.arange(tx * 16, min(tx * 16 + 16, wd)),
                                    indexing="ij")
            iy, ix = ys.reshape(-1), xs.reshape(-1)
        else:
            c, k = divmod(int(u), math.ceil(h * wd / chunk_px))
            flat = torch.arange(k * chunk_px, min((k + 1) * chunk_px, h * wd))
            iy, ix = flat // wd, flat % wd
        pix = torch.stack([ix, iy], -1).double() + 0.5
        t0 = time.perf_counter()
        m2d, con, opa, ft = (x[c:c + 1] for x in leaves)
        rad, dep = proj.radii[c:c + 1], proj.depths[c:c + 1].detach()
        if culled:
            lo, hi = pix.min(0).values, pix.max(0).values
            r = rad[0]
            hit = ((r > 0).all(-1) & (m2d[0, :, 0] + r[:, 0] >= lo[0]) & (m2d[0, :, 0] - r[:, 0] <= hi[0])
                   & (m2d[0, :, 1] + r[:, 1] >= lo[1]) & (m2d[0, :, 1] - r[:, 1] <= hi[1]))
            idx = torch.nonzero(hit)[:, 0]
            m2d, con, opa, ft, rad, dep = (x[:, idx] for x in (m2d, con, opa, ft, rad, dep))
        sub = type(proj)(m2d, con, dep, opa, rad)
        acc, alpha = _reference.rasterize_pixels(sub, ft, pix)
        depth = acc[..., 3] / alpha.clamp_min(1e-10)
        loss = ((acc[0, :, :3] * w[0][c, :, iy, ix].T.double()).sum() + (alpha[0] * w[1][c, iy, ix].double()).sum()
                + (depth[0] * w[2][c, iy, ix].double()).sum())
        loss.backward()
        times.append(time.perf_counter() - t0)
        compared.append((c, iy, ix, acc[0, :, :3].detach().float()))
    t0 = time.perf_counter()
    torch.autograd.backward([proj.means2d, proj.conics, proj.opacities, feats], [x.grad for x in leaves])
    t_project_bwd = time.perf_counter() - t0
    total = t_project_fwd + t_project_bwd + statistics.mean(times) * units
    return dict(total_s=total, sampled=len(picks), of=units, unit="16x16 tile" if culled else f"{chunk_px}-pixel chunk",
                mean_unit_s=statistics.mean(times), project_s=t_project_fwd + t_project_bwd), compared


def floor_seconds(contributing: int) -> tuple[float, float]:
    mhz = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    ghz = (mhz or 3000.0) / 1000
    peak = numba.get_num_threads() * 2 * 8 * 2 * ghz * 1e9  # cores x FMA pipes x float32 lanes x flops
    return contributing * FLOPS_PER_PAIR / peak, ghz


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dense-samples", type=int, default=3, help="pixel chunks timed for the dense reference")
    ap.add_argument("--tile-samples", type=int, default=24, help="tiles timed for the culled reference")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "splat_raster.json"))
    args = ap.parse_args()

    if args.quick:
        cases = [("box-20k", lambda: box_scene(20_000, 640, 360, 0.1)), ("garden", garden_scene)]
    else:
        cases = [("box-100k", lambda: box_scene(100_000, 1280, 720, 0.1)),
                 ("box-1M", lambda: box_scene(1_000_000, 1280, 720, 0.1)),
                 ("box-1M-opaque", lambda: box_scene(1_000_000, 1280, 720, 0.5)),
                 ("garden", garden_scene)]
    rows = []
    for name, make in cases:
        g, cams = make()
        w = weights_for(cams)
        h, wd = (int(v) for v in cams.image_size[0])
        cpu, out = time_cpu(g, cams, w, args.repeats)
        chunk = max(1, int(1.2e9 / (len(g) * 8 * 12)))  # ~1.2 GB of float64 intermediates per chunk
        dense, dense_px = reference_sample(g, cams, w, culled=False, samples=args.dense_samples, chunk_px=min(chunk, 256))
        culled, culled_px = reference_sample(g, cams, w, culled=True, samples=args.tile_samples, chunk_px=256)
        sampled = dense_px + culled_px
        diff = max(float((out.rgb[c][:, iy, ix].T.detach() - ref).abs().max()) for c, iy, ix, ref in sampled)
        mse = (sum(float(((out.rgb[c][:, iy, ix].T.detach() - ref) ** 2).sum()) for c, iy, ix, ref in sampled)
               / sum(ref.numel() for *_, ref in sampled))
        psnr = math.inf if mse == 0 else -10 * math.log10(mse)
        contributing = cpu["work"]["contributing"]
        floor, ghz = floor_seconds(contributing)
        rows.append(dict(scene=name, gaussians=len(g), cameras=len(cams), image=f"{wd}x{h}", cpu=cpu,
                         reference_dense=dense, reference_culled=culled, max_abs_rgb_diff_sampled=diff,
                         psnr_sampled_db=psnr,
                         contributions_per_pixel=contributing / (len(cams) * h * wd), floor_s=floor))
        print(f"{name}: cpu {cpu['total_s']:.2f}s, reference dense ~{dense['total_s']:.0f}s, "
              f"culled ~{culled['total_s']:.1f}s", flush=True)

    print()
    print("| scene | Gaussians | cameras x image | CPU fwd s | CPU bwd s | CPU fwd+bwd s | reference s (extrapolated) "
          "| speed-up | culled reference s (extrapolated) | speed-up | contributions / px | floor s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, d, u = r["cpu"], r["reference_dense"], r["reference_culled"]
        print(f"| {r['scene']} | {r['gaussians']:,} | {r['cameras']} x {r['image']} | {c['forward_s']:.2f} | "
              f"{c['backward_s']:.2f} | {c['total_s']:.2f} | {d['total_s']:.0f} ({d['sampled']}/{d['of']} "
              f"{d['unit']}s) | {d['total_s'] / c['total_s']:.0f}x | {u['total_s']:.1f} ({u['sampled']}/{u['of']} "
              f"tiles) | {u['total_s'] / c['total_s']:.1f}x | {r['contributions_per_pixel']:.0f} | {r['floor_s']:.2f} |")
    print()
    print("| scene | project | SH | intersect (sort + bin) | raster fwd | raster bwd | SH bwd | project bwd | other "
          "(torch glue) | CPU-seconds / wall | intersections | pixel lanes evaluated |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["cpu"]
        s = c["stages_s"]
        other = c["total_s"] - sum(s.values())
        print(f"| {r['scene']} | {s.get('project', 0):.3f} | {s.get('shade', 0):.3f} | {s.get('intersect', 0):.3f} | "
              f"{s.get('raster_fwd', 0):.3f} | {s.get('raster_bwd', 0):.3f} | {s.get('shade_bwd', 0):.3f} | "
              f"{s.get('project_bwd', 0):.3f} | {other:.3f} | "
              f"{c['cpu_seconds'] / c['total_s']:.2f} | {c['work']['intersections']:,} | {c['work']['evaluated']:,} |")
    print(f"\nReference times are extrapolated linearly from the sampled chunks / tiles (see the columns). "
          f"CPU vs reference on the sampled pixels: PSNR >= {min(r['psnr_sampled_db'] for r in rows):.0f} dB, max |rgb "
          f"difference| {max(r['max_abs_rgb_diff_sampled'] for r in rows):.1e} (a pair within float32 rounding of "
          f"alpha = 1/255 contributes on one side only). Floor: {FLOPS_PER_PAIR} flops per contributing "
          f"pair at {numba.get_num_threads()} cores x 32 float32 flops/cycle x {floor_seconds(0)[1]:.2f} GHz.")

    result = dict(benchmark="splat_raster", quick=args.quick, threads=numba.get_num_threads(),
                  torch_threads=torch.get_num_threads(), machine=platform.processor() or platform.machine(),
                  cpu_count=os.cpu_count(), rows=rows)
    with atomic_open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
