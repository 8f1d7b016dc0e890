"""bench/splat_ownership.py's counting: what each rank rasterises and receives when tile rows are owned by ranks,
against a per-tile brute force, and its footprints against the CPU rasteriser's own binning."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from manyview.splat import _cpu
from manyview.splat.backend import RenderSettings

_spec = importlib.util.spec_from_file_location(
    "splat_ownership", Path(__file__).resolve().parents[2] / "bench" / "splat_ownership.py")
so = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("splat_ownership", so)  # its dataclasses look their module up
_spec.loader.exec_module(so)


def _brute(rects, shard, owner, k):
    """Per tile: the rank owning its row gets the intersection; a pair goes to each distinct rank among its tiles."""
    work, pairs, delivered, crossing = np.zeros(k, np.int64), np.zeros(k, np.int64), 0, 0
    for (tx0, tx1, ty0, ty1), s in zip(rects, shard):
        reached = set()
        for ty in range(ty0, ty1 + 1):
            for _tx in range(tx0, tx1 + 1):
                work[owner[ty]] += 1
                reached.add(int(owner[ty]))
        for q in reached:
            pairs[q] += 1
        delivered += len(reached)
        crossing += len(reached - {int(s)})
    return work, pairs, delivered, crossing


def _random_rects(gen, n, tiles_x, tiles_y):
    tx0 = gen.integers(0, tiles_x, n)
    ty0 = gen.integers(0, tiles_y, n)
    tx1 = np.minimum(tx0 + gen.geometric(0.4, n) - 1, tiles_x - 1)
    ty1 = np.minimum(ty0 + gen.geometric(0.2, n) - 1, tiles_y - 1)  # some span many rows
    ty1[:3] = tiles_y - 1
    ty0[:3] = 0  # whole-height pairs
    return np.stack([tx0, tx1, ty0, ty1], 1)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_row_ownership_counts_equal_a_per_tile_brute_force(k):
    gen = np.random.default_rng(k)
    tiles_x, tiles_y = 9, 13
    rects = _random_rects(gen, 300, tiles_x, tiles_y)
    shard = gen.integers(0, k, len(rects))
    ty0, ty1, width = rects[:, 2], rects[:, 3], rects[:, 1] - rects[:, 0] + 1
    rows = so.row_work(ty0, ty1, width, tiles_y)
    assert np.array_equal(rows, [sum(int(w) for (_, _, a, b), w in zip(rects, width) if a <= t <= b)
                                 for t in range(tiles_y)])
    owner_sets = {
        "static": so.owners(so.static_cuts(tiles_y, k), tiles_y),
        "balanced": so.owners(so.balanced_cuts(rows, k), tiles_y),
        "one rank": np.full(tiles_y, k - 1),  # camera ownership: every other rank empty
        "gaps": so.owners(np.array([0] + sorted(gen.integers(0, tiles_y + 1, k - 1).tolist()) + [tiles_y]),
                          tiles_y),  # cuts may coincide: ranks with no rows
    }
    for name, owner in owner_sets.items():
        got = so.share(ty0, ty1, rows, shard, owner, k)
        work, pairs, delivered, crossing = _brute(rects, shard, owner, k)
        assert np.array_equal(got.work, work), name
        assert np.array_equal(got.pairs, pairs), name
        assert (got.delivered, got.crossing) == (delivered, crossing), name
        assert got.work.sum() == rows.sum()  # ownership moves intersections, never adds any


def test_balanced_cuts_cut_at_the_row_boundary_nearest_each_share_of_the_work():
    gen = np.random.default_rng(0)
    for _ in range(200):
        work = gen.integers(0, 20, gen.integers(1, 30)) * (gen.random(1) < 0.9)
        k = int(gen.integers(1, 9))
        cuts = so.balanced_cuts(work, k)
        assert len(cuts) == k + 1 and cuts[0] == 0 and cuts[-1] == len(work) and np.all(np.diff(cuts) >= 0)
        prefix = np.concatenate([[0], np.cumsum(work)])
        if prefix[-1] == 0:
            assert np.array_equal(cuts, so.static_cuts(len(work), k))
            continue
        for q in range(1, k):
            target = prefix[-1] * q / k
            assert abs(prefix[cuts[q]] - target) == np.abs(prefix - target).min()
        sums = np.add.reduceat(np.append(work, 0), cuts[:-1])[:k] * (np.diff(cuts) > 0)
        assert sums.max() <= prefix[-1] / k + work.max()


def test_footprints_are_the_rasterisers_intersections_and_bands_render_the_whole_image(scene, cameras):
    g, cams = scene(160, seed=3).to(torch.float32), cameras(3, height=70, width=90).to(torch.float32)
    settings = RenderSettings(sh_degree=2)
    proj = _cpu.BACKEND.project(g, cams, settings)
    colors = _cpu.BACKEND.shade(g, cams, settings, proj).detach()
    fps = so.footprints(proj, 90, 70)
    for c, fp in enumerate(fps):
        stats = {}
        sub, feats = so._pairs_of(proj, colors, c, np.arange(len(g)), 0)
        _cpu.rasterize(sub, feats, 70, 90, so.TILE, stats=stats)
        assert fp.rows_work.sum() == stats["intersections"] > 0
        _, whole = so._raster(sub, feats, 70, 90)
        owner = so.owners(so.static_cuts(len(fp.rows_work), 3), len(fp.rows_work))
        image = torch.zeros_like(whole[0])
        for q in range(3):
            rows = np.flatnonzero(owner == q)
            y0, y1 = int(rows[0]) * so.TILE, min((int(rows[-1]) + 1) * so.TILE, 70)
            sel = (fp.ty1 >= rows[0]) & (fp.ty0 <= rows[-1])
            band, feats_b = so._pairs_of(proj, colors, c, fp.gid[sel], y0)
            image[y0:y1] = so._raster(band, feats_b, y1 - y0, 90)[1][0]
        assert torch.equal(image, whole[0])
