"""The fast CPU backend against the float64 reference: images and every parameter's gradient."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.splat import Gaussians, _cpu, _cpu_kernels, render

PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


def _loss_weights(out, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (out.rgb, out.alpha, out.depth)]


def _render_and_grad(g: Gaussians, cams, backend, weights=None, **kw):
    g = g.clone().requires_grad_()
    out = render(g, cams, backend=backend, **kw)
    weights = weights or _loss_weights(out)
    loss = sum((t.double() * w).sum() for t, w in zip((out.rgb, out.alpha, out.depth), weights))
    loss.backward()
    return out, {n: getattr(g, n).grad.double() for n in PARAMS}, weights


def _psnr(a, b):
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else -10 * math.log10(mse)


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_cpu_matches_reference_images_and_gradients(scene, cameras, statistics, mode):
    g64, cams64 = scene(n=48, seed=1, degree=2), cameras(3)
    stats = statistics(g64, cams64, mode)
    assert stats["terminated"] > 0  # early termination is exercised, and in classic mode the 0.99 clamp
    assert stats["clamped"] > 0 or mode == "antialiased"
    assert stats["fov_clamped"] > 0  # and the Jacobian's field-of-view clamp
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    ref, ref_grads, w = _render_and_grad(g64, cams64, "reference", background=bg, mode=mode)
    out, grads, _ = _render_and_grad(g64.to(torch.float32), cams64.to(torch.float32), "cpu", w,
                                     background=bg.float(), mode=mode)
    assert out.rgb.dtype == torch.float32 and out.rgb.shape == ref.rgb.shape == (3, 3, 37, 53)
    assert _psnr(out.rgb, ref.rgb) >= 50
    assert _psnr(out.alpha, ref.alpha) >= 50
    assert (out.depth.double() - ref.depth).abs().max() < 1e-3
    assert 0.05 < ref.alpha.mean() < 0.999  # the scene neither misses the cameras nor saturates them
    for name in PARAMS:
        rel = ((grads[name] - ref_grads[name]).norm() / ref_grads[name].norm()).item()
        assert rel <= 1e-4, (name, rel)
    assert torch.equal(out.radii > 0, ref.radii > 0)


def test_cpu_matches_reference_with_sh_degree_3_and_a_lower_render_degree(scene, cameras):
    g64, cams64 = scene(n=30, seed=2, degree=3), cameras(2, height=24, width=40)
    for degree in (3, 1):
        ref, ref_grads, w = _render_and_grad(g64, cams64, "reference", sh_degree=degree)
        out, grads, _ = _render_and_grad(g64.to(torch.float32), cams64.to(torch.float32), "cpu", w, sh_degree=degree)
        assert _psnr(out.rgb, ref.rgb) >= 50
        for name in PARAMS:
            denom = ref_grads[name].norm()
            if denom == 0:  # coefficients above the render degree get exactly no gradient
                assert grads[name].abs().max() == 0
                continue
            assert ((grads[name] - ref_grads[name]).norm() / denom).item() <= 1e-4, name
        assert (ref_grads["sh_rest"][:, 3:].abs().max() == 0) == (degree == 1)


def test_tile_size_does_not_change_the_result(scene, cameras):
    g, cams = scene(n=40, seed=3).to(torch.float32), cameras(2, height=40, width=56).to(torch.float32)
    outs = [render(g, cams, backend="cpu", tile_size=ts) for ts in (8, 16, 24, 32, 64)]
    for o in outs[1:]:
        torch.testing.assert_close(o.rgb, outs[0].rgb, rtol=0, atol=1e-6)
        torch.testing.assert_close(o.alpha, outs[0].alpha, rtol=0, atol=1e-6)


def test_cpu_backend_is_deterministic_and_independent_of_the_thread_count(scene, cameras):
    g, cams = scene(n=40, seed=4).to(torch.float32), cameras(2).to(torch.float32)
    a = _render_and_grad(g, cams, "cpu")
    runs = [_render_and_grad(g, cams, "cpu", a[2])]
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        runs.append(_render_and_grad(g, cams, "cpu", a[2]))
    finally:
        numba.set_num_threads(threads)
    for b in runs:
        assert torch.equal(a[0].rgb, b[0].rgb)
        for name in PARAMS:
            assert torch.equal(a[1][name], b[1][name])


def test_zero_gaussians_render_the_background(cameras):
    g = Gaussians.empty(sh_degree=1)
    cams = cameras(2).to(torch.float32)
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, 0.5]])
    out = render(g, cams, background=bg, backend="cpu")
    assert out.rgb.shape == (2, 3, 37, 53)
    torch.testing.assert_close(out.rgb, bg[:, :, None, None].expand(2, 3, 37, 53))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0


def test_cameras_looking_away_give_an_empty_render_not_an_error(scene, cameras):
    g = scene(n=30, seed=5).to(torch.float32)
    cams = cameras(2).to(torch.float32)
    away = cams.with_poses(cams.c2w @ torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0])))  # turn around (y axis)
    g = g.select(torch.arange(5, 30))  # keep those around the origin (no huge one, none behind the cameras)
    g = g.clone().requires_grad_()
    out = render(g, away, backend="cpu")
    assert out.alpha.abs().max() == 0
    assert (out.radii == 0).all()
    out.rgb.sum().backward()
    assert g.means.grad.abs().max() == 0


def test_gaussians_behind_the_near_plane_are_culled(cameras):
    cams = cameras(1).to(torch.float32)
    center = cams.centers[0]
    forward = cams.R[0, :, 2]
    means = torch.stack([center + 0.005 * forward, center + 2.0 * forward])  # depth 0.005 < near, and 2.0
    g = Gaussians(means, torch.full((2, 3), math.log(0.2)), torch.tensor([[1.0, 0, 0, 0]] * 2),
                  torch.full((2,), 3.0), torch.zeros(2, 1, 3), torch.zeros(2, 0, 3))
    out = render(g, cams, backend="cpu", near=0.01)
    assert out.radii[0, 0].max() == 0 and out.radii[0, 1].min() > 0
    ref = render(g.to(torch.float64), cams.to(torch.float64), backend="reference", near=0.01)
    torch.testing.assert_close(out.alpha.double(), ref.alpha, rtol=0, atol=1e-6)


def test_means2d_collects_gradients_for_densification(scene, cameras):
    g = scene(n=20, seed=6).to(torch.float32).requires_grad_()
    out = render(g, cameras(2).to(torch.float32), backend="cpu")
    out.means2d.retain_grad()
    out.rgb.sum().backward()
    assert out.means2d.grad.shape == (2, 20, 2)
    visible = (out.radii > 0).all(-1)
    assert out.means2d.grad[~visible].abs().max() == 0
    assert out.means2d.grad[visible].abs().sum() > 0


def test_cpu_backend_rejects_tiles_beyond_its_state_layout(scene, cameras):
    g, cams = scene(n=10, seed=3).to(torch.float32), cameras(1).to(torch.float32)
    with pytest.raises(ManyviewError, match="tile_size"):
        render(g, cams, backend="cpu", tile_size=_cpu_kernels.MAX_TILE + 1)


def test_fast_exp_matches_libm():
    p = np.concatenate([np.linspace(0.0, _cpu_kernels.EXP_CLAMP, 40001), [1e-12, 5.54]]).astype(np.float32)
    approx = np.array([_cpu_kernels.exp_neg32(x) for x in p])
    exact = np.exp(-p.astype(np.float64))
    assert np.max(np.abs(approx / exact - 1)) < 3e-6
    # beyond the clamp it stays at e^-8, below alpha = 1/255 for any opacity <= 1
    beyond = np.array([_cpu_kernels.exp_neg32(np.float32(x)) for x in (8.5, 30.0, 1e9, np.inf)])
    assert np.all(beyond <= np.exp(-_cpu_kernels.EXP_CLAMP) * (1 + 3e-6)) and np.exp(-8) < 1 / 255


def _pixel_box_tiles(proj, c, g, height, width, tile_size):
    """Tiles (row-major) of the pixels whose centres lie inside pair (c, g)'s extent, by brute force."""
    mx, my = proj.means2d[c, g].double().tolist()
    rx, ry = proj.radii[c, g].double().tolist()
    xs = np.flatnonzero(np.abs(np.arange(width) + 0.5 - mx) <= rx)
    ys = np.flatnonzero(np.abs(np.arange(height) + 0.5 - my) <= ry)
    if rx == 0 or xs.size == 0 or ys.size == 0:
        return []
    tiles_x = -(-width // tile_size)
    return [ty * tiles_x + tx for ty in range(ys[0] // tile_size, ys[-1] // tile_size + 1)
            for tx in range(xs[0] // tile_size, xs[-1] // tile_size + 1)]


def test_intersections_are_tile_major_depth_sorted_and_inverted(scene, cameras):
    h, w, ts, P = 40, 56, 16, 60
    g, cams = scene(n=P, seed=8).to(torch.float32), cameras(2, height=h, width=w).to(torch.float32)
    proj = _cpu.project(g, cams)
    isect = _cpu.intersect(proj, h, w, ts)
    depths = proj.depths.detach().reshape(-1).numpy()
    n_tiles = 4 * 3
    tile_of = np.repeat(np.arange(len(isect.tile_offsets) - 1), np.diff(isect.tile_offsets))
    for t in range(len(isect.tile_offsets) - 1):
        ids = isect.flat_ids[isect.tile_offsets[t]:isect.tile_offsets[t + 1]]
        assert np.all(np.diff(depths[ids]) >= 0)
        assert np.all(np.diff(isect.rank[ids]) > 0)  # the rank orders a tile's list, ties included
        assert np.all(ids // P == t // n_tiles)
    # every pair appears once per tile of its pixel box (brute force), and isect_of finds each of them
    assert np.array_equal(isect.rank[isect.order], np.arange(len(isect.order)))
    assert (isect.rank >= 0).sum() == len(isect.order)
    assert np.array_equal(np.sort(isect.isect_of), np.arange(isect.count))
    expected_count = 0
    for cg in range(2 * P):
        c, gi = divmod(cg, P)
        tiles = [c * n_tiles + t for t in _pixel_box_tiles(proj, c, gi, h, w, ts)]
        expected_count += len(tiles)
        if not tiles:
            assert isect.rank[cg] == -1
            continue
        r = isect.rank[cg]
        pos = isect.isect_of[isect.rank_offsets[r]:isect.rank_offsets[r + 1]]
        assert np.all(isect.flat_ids[pos] == cg)
        assert tile_of[pos].tolist() == tiles
    assert expected_count == isect.count


def test_row_bounds_contain_exactly_the_ellipse_within_a_strip():
    rng = np.random.default_rng(3)
    for _ in range(300):
        L = rng.normal(size=(2, 2)) * rng.uniform(0.05, 1.0)
        Q = L @ L.T + 0.05 * np.eye(2)  # conic (inverse covariance)
        a, b, c = Q[0, 0], Q[0, 1], Q[1, 1]
        thr = rng.uniform(0.1, 5.5)
        ymax = np.sqrt(2 * thr * a / (a * c - b * b))
        xmax = np.sqrt(2 * thr * c / (a * c - b * b))
        xa = rng.uniform(-1.5, 1.2) * xmax
        xb = xa + rng.uniform(0.0, 1.0) * xmax
        lo, hi = _cpu_kernels._strip_rows(a, b, c, thr, ymax, xa, xb)
        # brute force: for each dx of a fine grid over the strip, the dy interval of the ellipse
        dx = np.linspace(xa, xb, 20001)
        disc = (b * dx) ** 2 - c * (a * dx * dx - 2 * thr)
        ok = disc >= 0
        if not ok.any():
            assert lo > hi or (hi - lo) < 1e-3 * ymax  # no meeting (or only at a grid-missed tangent)
            continue
        root = np.sqrt(disc[ok])
        lo_bf, hi_bf = ((-b * dx[ok] - root) / c).min(), ((-b * dx[ok] + root) / c).max()
        tol = 1e-9 * ymax
        assert lo <= lo_bf + tol and hi >= hi_bf - tol  # never excludes a row the ellipse reaches
        assert lo >= lo_bf - 1e-3 * ymax and hi <= hi_bf + 1e-3 * ymax  # and is tight


def test_radix_argsort_is_a_stable_argsort():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 3000):
        keys = rng.integers(0, 50, n).astype(np.float32) * np.float32(0.37)  # many ties
        keys[: n // 4] = np.float32(0.0)
        out = np.empty(n, np.int32)
        _cpu_kernels.argsort_positive(keys, out)
        assert np.array_equal(out, np.argsort(keys, kind="stable"))
