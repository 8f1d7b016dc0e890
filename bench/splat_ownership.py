"""Who rasterises what across ranks: ownership by camera (manyview's ``distributed_render``, gsplat's distributed
mode) against ownership by ranges of tile rows (Grendel-GS's pixel partition, fVDB's tile-range ownership), counted
on the same projections of skewed scenes.

Each scene is built with manyview's own code (``from_points``: 3DGS's initialisation, scales from the neighbours'
distances, so dense regions get small splats and sparse ones large; ``Cameras.look_at``) and projected once with
the CPU backend's ``project`` (as ``distributed_render`` calls it on every rank); the tile rectangle of every
camera-Gaussian pair is the rasteriser's own binning (``count_tiles``, 16 x 16 tiles), so the counts below are the
intersections the rasteriser would process. Gaussians are shuffled with a seed and sharded in file order
(``chunk_sizes``), as ``ShardedGaussians.distribute`` does. For K ranks and a batch of B cameras a step (the
scene's cameras in consecutive batches), every step is assigned by four policies:

- ``camera``: rank q rasterises a contiguous block of the batch's cameras (``chunk_sizes(B, K)``); each pair goes
  to one rank;
- ``rows``: each camera's tile rows split into K equal contiguous bands, rank q rasterising band q of every camera;
- ``rows_balanced``: each camera's tile rows split into K contiguous bands of (nearly) equal intersections;
- ``batch_balanced``: the batch's tile rows, concatenated camera after camera, cut into K contiguous ranges of
  (nearly) equal intersections: Grendel's partition, which may give a rank several whole cameras or part of one.

The balanced splits use this step's own counts, the best a balancer that learns from the previous step (Grendel
times each rank's last step) can reach. A pair goes to every rank owning a tile row its tile rectangle covers.
Counted per step and rank: the rasterisation work (tile intersections), the pairs received, and the pairs that
cross to another rank than the one holding the Gaussian, 96 B each (12 float32 forward, their gradients back).
Imbalance = sum over steps of the busiest rank's work / sum over steps of the mean rank's work (1 = even; the
step waits for its busiest rank). No policy changes the total intersections, only who does them; tile rows
duplicate the pairs whose rectangle straddles a band border.

``--time-scene`` also rasterises (forward and backward, the CPU rasteriser, one thread, CPU seconds) each rank's
share of one scene under every policy, a band as an image of the band's height with the means moved up by its first
pixel row (the pixel-centre test is per pixel, so a band renders its rows of the whole image; moving the means in
float32 can move a box edge by one pixel, which the run reports), to check that the counts predict the time.

    python bench/splat_ownership.py                                 # 5 scenes, 10^6 Gaussians, 8 cameras 1280x720
    python bench/splat_ownership.py --gaussians 50000 --width 320 --height 180 --out /tmp/quick.json --no-readme
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from manyview.io.atomic import atomic_open
from manyview.scene import Cameras, PointCloud
from manyview.splat import _cpu
from manyview.splat import _cpu_kernels as kernels
from manyview.splat.backend import RenderSettings
from manyview.splat.init import from_points
from manyview.splat.sharded import chunk_sizes
from manyview.splat.types import Projected

OUT = Path(__file__).resolve().parent / "results" / "splat_ownership.json"
TILE = 16
PAIR_BYTES_STEP = 2 * 12 * 4  # 12 float32 forward (distributed_render.PAIR_FIELDS) and their gradients back
POLICIES = ("camera", "rows", "rows_balanced", "batch_balanced")


# ------------------------------------------------------------------------------------------------ counting
def row_work(ty0: np.ndarray, ty1: np.ndarray, width: np.ndarray, tiles_y: int) -> np.ndarray:
    """Tile intersections in each tile row: pair i covers rows ty0[i]..ty1[i] (inclusive), ``width[i]`` tiles in
    each. (tiles_y,) int64."""
    w = width.astype(np.float64)
    diff = (np.bincount(ty0, weights=w, minlength=tiles_y + 1)
            - np.bincount(ty1.astype(np.int64) + 1, weights=w, minlength=tiles_y + 1))
    return np.rint(np.cumsum(diff[:tiles_y])).astype(np.int64)


def static_cuts(tiles_y: int, k: int) -> np.ndarray:
    """Row boundaries (k + 1,) of k equal contiguous bands (``chunk_sizes``' rule)."""
    return np.concatenate([[0], np.cumsum(chunk_sizes(tiles_y, k))]).astype(np.int64)


def balanced_cuts(work: np.ndarray, k: int) -> np.ndarray:
    """Row boundaries (k + 1,) of k contiguous ranges of rows whose work sums are as even as row boundaries allow:
    cut q at the boundary whose prefix sum is nearest to q / k of the total."""
    prefix = np.concatenate([[0], np.cumsum(work)]).astype(np.float64)
    n, total = len(work), prefix[-1]
    if total == 0:
        return static_cuts(n, k)
    targets = total * np.arange(1, k) / k
    hi = np.clip(np.searchsorted(prefix, targets), 1, n)
    lo = hi - 1
    inner = np.where(targets - prefix[lo] <= prefix[hi] - targets, lo, hi)
    return np.concatenate([[0], np.maximum.accumulate(inner), [n]]).astype(np.int64)


def owners(cuts: np.ndarray, n_rows: int) -> np.ndarray:
    """The rank owning each row, for ranks owning rows [cuts[q], cuts[q + 1]). (n_rows,) int64, non-decreasing."""
    return np.searchsorted(cuts[1:], np.arange(n_rows), side="right").astype(np.int64)


@dataclass(frozen=True)
class Share:
    """What one camera's pairs cost the ranks under one ownership of its tile rows."""

    work: np.ndarray  # (K,) tile intersections each rank rasterises
    pairs: np.ndarray  # (K,) pairs each rank receives (its own included)
    delivered: int  # pair deliveries (a pair straddling m ranks' rows counts m)
    crossing: int  # deliveries to a rank other than the one holding the Gaussian


def share(ty0: np.ndarray, ty1: np.ndarray, rows_work: np.ndarray, shard: np.ndarray, owner: np.ndarray,
          k: int) -> Share:
    """Assign one camera's pairs (tile rows ty0..ty1, Gaussian held by rank ``shard``) to the ranks owning its tile
    rows (``owner``: non-decreasing rank of each row); ``rows_work``: the intersections of each row."""
    lo, hi = owner[ty0], owner[ty1]
    runs = np.concatenate([[0], np.cumsum(owner[1:] != owner[:-1])])
    present = np.bincount(owner, minlength=k) > 0
    reach = runs[ty1] - runs[ty0] + 1  # ranks the pair reaches: one per run of equal owners it covers
    at_home = (lo <= shard) & (shard <= hi) & present[shard]
    span = np.cumsum(np.bincount(lo, minlength=k + 1) - np.bincount(hi + 1, minlength=k + 1))[:k]
    delivered = int(reach.sum())
    return Share(work=np.bincount(owner, weights=rows_work, minlength=k).astype(np.int64),
                 pairs=span * present, delivered=delivered, crossing=delivered - int(at_home.sum()))


def combine(shares: list[Share], k: int) -> Share:
    return Share(sum((s.work for s in shares), np.zeros(k, np.int64)),
                 sum((s.pairs for s in shares), np.zeros(k, np.int64)),
                 sum(s.delivered for s in shares), sum(s.crossing for s in shares))


# ------------------------------------------------------------------------------------------------ scenes
def _shell(n: int, r0: float, r1: float, gen: torch.Generator) -> torch.Tensor:
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    return d * (r0 + (r1 - r0) * torch.rand(n, 1, generator=gen, dtype=torch.float64))


def _box(n: int, low, high, gen: torch.Generator) -> torch.Tensor:
    low, high = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    return low + (high - low) * torch.rand(n, 3, generator=gen, dtype=torch.float64)


UP = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)  # world -y appears up (as bench/splat_distributed.py)


def _ring(n: int, radius: float, height: float = -0.3) -> torch.Tensor:
    a = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([radius * torch.sin(a), torch.full_like(a, height), -radius * torch.cos(a)], -1)


def build_scene(name: str, p: int, width: int, height: int, seed: int = 0) -> tuple[torch.Tensor, Cameras, str]:
    """Points (P, 3) (Gaussians are made from them), 8 cameras, and a line saying what the scene is."""
    gen = torch.Generator().manual_seed(seed)
    c = 8
    zero = torch.zeros(3, dtype=torch.float64)
    if name == "balanced":
        xyz = _box(p, (-1, -1, -1), (1, 1, 1), gen)
        eyes, targets = _ring(c, 2.6), zero.expand(c, 3)
        what = "control: uniform in a 2 m box, 8 cameras on a ring round it (bench/splat_distributed.py's scene)"
    elif name == "corner":
        n_bg = p * 15 // 100
        # a dense ball that every camera sees in the upper left of its image, before a sparse wall
        ball = _shell(p - n_bg, 0.0, 0.35, gen) + torch.tensor([-1.28, -0.36, 0.0], dtype=torch.float64)
        wall = _box(n_bg, (-4.5, -2.6, 2.0), (4.5, 2.6, 3.0), gen)
        xyz = torch.cat([ball, wall])
        gx, gy = torch.meshgrid(torch.linspace(-0.3, 0.3, 4, dtype=torch.float64),
                                torch.linspace(-0.15, 0.15, 2, dtype=torch.float64), indexing="xy")
        eyes = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.full((c,), -3.0, dtype=torch.float64)], -1)
        targets = eyes + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
        what = ("forward-facing: 85 % of the Gaussians in a ball in the upper-left corner of every view, 15 % on a "
                "wall behind; 8 parallel cameras on a 4 x 2 grid")
    elif name == "object":
        n_bg = p * 20 // 100
        xyz = torch.cat([_shell(p - n_bg, 0.58, 0.6, gen), _shell(n_bg, 8.0, 10.0, gen)])
        eyes, targets = _ring(c, 3.0), zero.expand(c, 3)
        what = ("a dense object in front of a sparse background: 80 % on a 0.6 m sphere, 20 % on a shell 8-10 m "
                "away; 8 cameras on a ring at 3 m")
    elif name == "one_camera":
        n_wall = p * 30 // 100
        a = 2 * math.pi * torch.rand(n_wall, generator=gen, dtype=torch.float64)
        r = 4.0 + 0.05 * torch.rand(n_wall, generator=gen, dtype=torch.float64)
        y = -1.5 + 3.0 * torch.rand(n_wall, generator=gen, dtype=torch.float64)
        wall = torch.stack([r * torch.sin(a), y, -r * torch.cos(a)], -1)
        ball = _shell(p - n_wall, 0.0, 0.3, gen) + torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64)
        xyz = torch.cat([ball, wall])
        outward = _ring(c, 1.0, 0.0)
        eyes, targets = 0.2 * outward, outward * 2.0
        what = ("most Gaussians seen by one camera: 8 cameras at the middle of a round room looking outward, 30 % on "
                "its wall, 70 % in a ball 2 m in front of camera 0 only")
    elif name == "dolly":
        n_bg = p * 15 // 100
        xyz = torch.cat([_shell(p - n_bg, 0.58, 0.6, gen), _shell(n_bg, 8.0, 10.0, gen)])
        dist = torch.logspace(math.log10(7.0), math.log10(1.0), c, dtype=torch.float64)
        a = torch.linspace(0.0, 0.6, c, dtype=torch.float64)
        eyes = torch.stack([dist * torch.sin(a), torch.full_like(a, -0.2), -dist * torch.cos(a)], -1)
        targets = zero.expand(c, 3)
        what = ("unequal cameras: the object scene's 85 % sphere and 15 % shell, 8 cameras moving in from 7 m to 1 m "
                "(consecutive frames of a dolly-in)")
    else:
        raise ValueError(f"unknown scene {name!r}")
    xyz = xyz[torch.randperm(p, generator=gen)]  # file order unrelated to space, as after densification
    f = 900.0 * width / 1280
    cams = Cameras.look_at(eyes, targets, UP, torch.tensor([f, f, width / 2, height / 2], dtype=torch.float64),
                           (height, width)).to(torch.float32)
    return xyz, cams, what


SCENES = ("balanced", "corner", "object", "one_camera", "dolly")


# ------------------------------------------------------------------------------------------------ projection
@dataclass
class Footprints:
    """One camera's pairs that touch a tile: tile rows ty0..ty1, tiles per row, Gaussian index."""

    ty0: np.ndarray
    ty1: np.ndarray
    width: np.ndarray
    gid: np.ndarray
    rows_work: np.ndarray  # (tiles_y,)
    visible: int  # pairs with radius > 0: what distributed_render sends today (some touch no pixel centre)


def footprints(proj: Projected, width: int, height: int) -> list[Footprints]:
    means2d, radii = proj.means2d.detach().numpy(), proj.radii.numpy()
    c, p = radii.shape[:2]
    counts = np.empty(c * p, dtype=np.int64)
    rects = np.empty((c * p, 4), dtype=np.int32)
    kernels.count_tiles(means2d, radii, width, height, TILE, counts, rects)  # the rasteriser's own binning
    tiles_y = (height + TILE - 1) // TILE
    out = []
    for cam in range(c):
        ids = np.flatnonzero(counts[cam * p:(cam + 1) * p])
        r = rects[cam * p + ids]
        ty0, ty1, w = r[:, 2].astype(np.int64), r[:, 3].astype(np.int64), (r[:, 1] - r[:, 0] + 1).astype(np.int64)
        rows = row_work(ty0, ty1, w, tiles_y)
        assert rows.sum() == counts[cam * p:(cam + 1) * p].sum()
        out.append(Footprints(ty0, ty1, w, ids.astype(np.int64), rows,
                              int((radii[cam] > 0).all(-1).sum())))
    return out


# ------------------------------------------------------------------------------------------------ policies
def camera_owner(batch: int, k: int) -> np.ndarray:
    return np.repeat(np.arange(k), chunk_sizes(batch, k))


def step_owners(policy: str, fps: list[Footprints], k: int) -> list[np.ndarray]:
    """The row owners of each camera of one step under ``policy``."""
    tiles_y = len(fps[0].rows_work)
    if policy == "camera":
        return [np.full(tiles_y, q, dtype=np.int64) for q in camera_owner(len(fps), k)]
    if policy == "rows":
        return [owners(static_cuts(tiles_y, k), tiles_y)] * len(fps)
    if policy == "rows_balanced":
        return [owners(balanced_cuts(fp.rows_work, k), tiles_y) for fp in fps]
    if policy == "batch_balanced":
        flat = owners(balanced_cuts(np.concatenate([fp.rows_work for fp in fps]), k), tiles_y * len(fps))
        return list(flat.reshape(len(fps), tiles_y))
    raise ValueError(policy)


def evaluate(fps: list[Footprints], p: int, ks: list[int], batches: list[int]) -> list[dict]:
    rows = []
    for k in ks:
        step_size = -(-p // k)
        shards = [fp.gid // step_size for fp in fps]
        for b in batches:
            starts = range(0, len(fps), b)
            for policy in POLICIES:
                per_step = []
                for s in starts:
                    cams = range(s, min(s + b, len(fps)))
                    own = step_owners(policy, [fps[c] for c in cams], k)
                    per_step.append(combine([share(fps[c].ty0, fps[c].ty1, fps[c].rows_work, shards[c], o, k)
                                             for c, o in zip(cams, own)], k))
                touching = sum(len(fp.ty0) for fp in fps)
                busiest = sum(int(s.work.max()) for s in per_step)
                mean = sum(float(s.work.mean()) for s in per_step)
                n = len(per_step)
                rows.append({"K": k, "batch": b, "policy": policy, "steps": n,
                             "imbalance": busiest / mean if mean else 1.0,
                             "busiest_rank_intersections_per_step": busiest / n,
                             "mean_rank_intersections_per_step": mean / n,
                             "pair_imbalance": (sum(int(s.pairs.max()) for s in per_step)
                                                / max(sum(float(s.pairs.mean()) for s in per_step), 1e-9)),
                             "pairs_delivered_per_step": sum(s.delivered for s in per_step) / n,
                             "duplication": sum(s.delivered for s in per_step) / max(touching, 1),
                             "crossing_pairs_per_step": sum(s.crossing for s in per_step) / n,
                             "crossing_bytes_per_step": PAIR_BYTES_STEP * sum(s.crossing for s in per_step) / n,
                             "max_rank_pairs_per_step": max(int(s.pairs.max()) for s in per_step)})
    return rows


# ------------------------------------------------------------------------------------------------ timing
def _pairs_of(proj: Projected, colors: torch.Tensor, cam: int, ids: np.ndarray, y0: int):
    """Leaf tensors of one camera's pairs ``ids``, as a one-camera batch, with the means moved up by y0 pixels."""
    idx = torch.from_numpy(ids)
    means2d = proj.means2d[cam, idx].detach().clone()
    means2d[:, 1] -= y0
    leaf = lambda t: t.detach().clone()[None].requires_grad_(True)
    means2d = means2d[None].requires_grad_(True)
    conics, opac = leaf(proj.conics[cam, idx]), leaf(proj.opacities[cam, idx])
    feats = leaf(torch.cat([colors[cam, idx], proj.depths[cam, idx, None]], -1))
    sub = Projected(means2d, conics, proj.depths[cam, idx][None].detach(), opac, proj.radii[cam, idx][None])
    return sub, feats


def _raster(sub: Projected, feats: torch.Tensor, height: int, width: int,
            stats: dict | None = None) -> tuple[float, torch.Tensor]:
    """CPU seconds of one forward + backward (this process runs one thread: on cores shared with other jobs the
    CPU time is steadier than the wall time, which counts the waits for a core), and the accumulated features."""
    t0 = time.process_time()
    accum, alpha = _cpu.rasterize(sub, feats, height, width, TILE, stats=stats)
    (accum.sum() + alpha.sum()).backward()
    return time.process_time() - t0, accum.detach()


def time_shares(proj: Projected, colors: torch.Tensor, fps: list[Footprints], width: int, height: int,
                ks: list[int], repeats: int) -> dict:
    """CPU time of rasterising (forward + backward) each rank's share of the whole batch, per policy and K."""
    warm_sub, warm_feats = _pairs_of(proj, colors, 0, fps[0].gid[:64], 0)
    _raster(warm_sub, warm_feats, height, width)
    shares, full = [], {}
    for k in ks:
        for policy in POLICIES:
            own = step_owners(policy, fps, k)
            for q in range(k):
                seconds, work, pairs, pixels, evaluated, binned = 0.0, 0, 0, 0, 0, 0
                for cam, (fp, o) in enumerate(zip(fps, own)):
                    rows = np.flatnonzero(o == q)
                    if not len(rows):
                        continue
                    r0, r1 = int(rows[0]), int(rows[-1])
                    sel = (fp.ty1 >= r0) & (fp.ty0 <= r1)
                    y0, y1 = r0 * TILE, min((r1 + 1) * TILE, height)
                    sub, feats = _pairs_of(proj, colors, cam, fp.gid[sel], y0)
                    best, stats = math.inf, {}
                    for _ in range(repeats):
                        s, accum = _raster(sub, feats, y1 - y0, width, stats)
                        best = min(best, s)
                    binned += stats["intersections"]  # moving the means by y0 in float32 can move a box edge
                    seconds += best
                    work += int(fp.rows_work[r0:r1 + 1].sum())
                    pairs += int(sel.sum())
                    pixels += (y1 - y0) * width
                    evaluated += stats["evaluated"]
                    if k == ks[0] and policy in ("camera", "rows"):  # check the bands against whole images
                        band = full.setdefault((policy, cam), torch.zeros(height, width, 4))
                        band[y0:y1] = accum[0]
                shares.append({"K": k, "policy": policy, "rank": q, "intersections": work, "pairs": pairs,
                               "pixels": pixels, "evaluated": evaluated, "binned": binned, "seconds": seconds})
                print(f"  time K={k} {policy:15s} rank {q}: {work:>11,} intersections {pairs:>9,} pairs "
                      f"{pixels:>9,} pixels {evaluated:>12,} evaluated {seconds:7.2f} s", flush=True)
    bands_vs_whole = max(float((full[("rows", c)] - full[("camera", c)]).abs().max()) for c in range(len(fps)))
    col = lambda key: np.array([s[key] for s in shares], dtype=np.float64)
    y = col("seconds")

    def fit(*keys: str) -> dict:
        design = np.stack([col(key) for key in keys] + [np.ones_like(y)], 1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        r2 = 1 - ((y - design @ coef) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        return {**{f"s_per_million_{key}": float(c * 1e6) for key, c in zip(keys, coef)},
                "constant_s": float(coef[-1]), "r2": float(r2)}

    time_imbalance = {}
    for k in ks:
        for policy in POLICIES:
            t = [s["seconds"] for s in shares if s["K"] == k and s["policy"] == policy]
            time_imbalance[f"{policy} K={k}"] = max(t) / (sum(t) / len(t))
    return {"shares": shares,
            "pearson_seconds": {key: float(np.corrcoef(col(key), y)[0, 1])
                                for key in ("intersections", "pairs", "pixels", "evaluated")},
            "fits": {"intersections": fit("intersections"), "intersections+pixels": fit("intersections", "pixels"),
                     "intersections+pixels+pairs": fit("intersections", "pixels", "pairs")},
            "time_imbalance": time_imbalance,
            "max_rel_diff_binned_vs_counted": max(abs(s["binned"] - s["intersections"]) / max(s["intersections"], 1)
                                                  for s in shares),
            "max_abs_diff_bands_vs_whole_image": bands_vs_whole}


# ------------------------------------------------------------------------------------------------ report
def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def table(result: dict) -> str:
    cfg = result["config"]
    lines = [f"{cfg['gaussians']:,} Gaussians (SH 3, `from_points` scales), 8 cameras at {cfg['width']} x "
             f"{cfg['height']}, 16 x 16 tiles; the same projections for every policy. Policies, in each cell: "
             f"**camera** (contiguous camera blocks, manyview today) / **rows** (each camera's tile rows in K equal "
             f"bands) / **rows bal.** (K bands of equal work per camera) / **batch bal.** (the batch's tile rows "
             f"cut into K ranges of equal work: Grendel's partition). Imbalance = busiest rank's intersections / "
             f"mean, summed over the steps; duplication = pair deliveries / pairs (camera: 1); crossing = MiB a "
             f"step sent to another rank than the Gaussian's, 96 B a pair (forward + backward).", "",
             "| scene | K | batch | imbalance | duplication (rows / rows bal. / batch bal.) | crossing MiB / step |",
             "|---|---:|---:|---|---|---|"]
    for sc in result["scenes"]:
        for k in cfg["ranks"]:
            for b in cfg["batches"]:
                if not (b == 8 or (b < k and b in (1, k // 2))):
                    continue
                cells = {r["policy"]: r for r in sc["rows"] if r["K"] == k and r["batch"] == b}
                imb = " / ".join(f"{cells[p]['imbalance']:.2f}" for p in POLICIES)
                dup = " / ".join(f"{cells[p]['duplication']:.2f}" for p in POLICIES[1:])
                cross = " / ".join(_mib(cells[p]["crossing_bytes_per_step"]) for p in POLICIES)
                lines.append(f"| {sc['name']} | {k} | {b} | {imb} | {dup} | {cross} |")
    t = result.get("timing")
    if t:
        r, fits = t["pearson_seconds"], t["fits"]
        two = fits["intersections+pixels"]
        lines += ["", f"Timing ({t['scene']}, one thread, CPU seconds of the forward + backward of each rank's share "
                      f"of the 8 cameras, best of {t['repeats']}; {len(t['shares'])} shares over K = "
                      f"{', '.join(map(str, t['ranks']))} and the four policies): Pearson r with the seconds: "
                      f"intersections {r['intersections']:.2f}, pixels owned {r['pixels']:.2f}, pairs "
                      f"{r['pairs']:.2f}, pixel-Gaussian evaluations "
                      f"{r['evaluated']:.2f}; least squares s = {two['s_per_million_intersections']:.3f} x M "
                      f"intersections + {two['s_per_million_pixels']:.3f} x M pixels + {two['constant_s']:.3f} "
                      f"(R^2 {two['r2']:.2f}; intersections alone {fits['intersections']['r2']:.2f}). Measured "
                      f"time imbalance (slowest / mean rank): "
                      + ", ".join(f"{key} {v:.2f}" for key, v in t["time_imbalance"].items())
                      + f". Bands composed into whole images differ from the whole-image render by at most "
                      f"{t['max_abs_diff_bands_vs_whole_image']:.1e} (a band moves the means by its first pixel "
                      f"row in float32, which can move a box edge by one pixel: the rasteriser binned within "
                      f"{t['max_rel_diff_binned_vs_counted']:.1e} of the counted intersections)."]
    m = result["machine"]
    lines += ["", f"{result['date']}, {m['cpus']} CPUs shared with other jobs (load average {m['load_start']:.1f} "
                  f"-> {m['load_end']:.1f}), one thread."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--time-scene", default="one_camera", choices=(*SCENES, "none"))
    parser.add_argument("--time-ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=1, help="timed rasterisations per share (the fastest kept)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into bench/README.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = RenderSettings(sh_degree=3)
    load_start = os.getloadavg()[0]
    scenes, timing = [], None
    for name in args.scenes:
        t0 = time.perf_counter()
        xyz, cams, what = build_scene(name, args.gaussians, args.width, args.height)
        g = from_points(PointCloud(xyz))
        proj = _cpu.BACKEND.project(g, cams, settings)
        fps = footprints(proj, args.width, args.height)
        rows = evaluate(fps, args.gaussians, args.ranks, args.batches)
        visible = [fp.visible for fp in fps]
        touching = [len(fp.ty0) for fp in fps]
        scenes.append({"name": name, "what": what, "visible_pairs_per_camera": visible,
                       "touching_pairs_per_camera": touching,
                       "intersections_per_camera": [int(fp.rows_work.sum()) for fp in fps],
                       "visible_pairs_touching_no_tile": sum(visible) - sum(touching), "rows": rows})
        print(f"{name}: visible {sum(visible):,} pairs ({sum(visible) - sum(touching):,} touch no tile), "
              f"intersections per camera {[int(fp.rows_work.sum()) for fp in fps]} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        for r in rows:
            if r["batch"] in (1, 8):
                print(f"  K={r['K']} B={r['batch']} {r['policy']:15s} imbalance {r['imbalance']:.2f} "
                      f"duplication {r['duplication']:.3f} crossing {_mib(r['crossing_bytes_per_step'])} MiB/step",
                      flush=True)
        if name == args.time_scene:
            colors = _cpu.BACKEND.shade(g, cams, settings, proj).detach()
            timing = {"scene": name, "ranks": args.time_ranks, "repeats": args.repeats,
                      **time_shares(proj, colors, fps, args.width, args.height, args.time_ranks, args.repeats)}
            print(f"  timing: r {timing['pearson_seconds']}, fits {timing['fits']}, time imbalance "
                  f"{timing['time_imbalance']}", flush=True)
        del g, proj, fps
    result = {"benchmark": "splat_ownership", "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_start": load_start, "load_end": os.getloadavg()[0]},
              "scenes": scenes, "timing": timing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(f"wrote {args.out}")
    if not args.no_readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_table import write_table

        write_table("splat_ownership", table(result), heading="Splat rasterisation ownership: by camera against "
                    "by tile rows (`bench/splat_ownership.py`)")
    print(table(result))


if __name__ == "__main__":
    main()
