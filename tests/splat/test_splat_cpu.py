"""The fast CPU backend against the float64 reference: images and every parameter's gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manyview.splat import Gaussians, render
from manyview.splat import _cpu, _cpu_kernels

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
    outs = [render(g, cams, backend="cpu", tile_size=ts) for ts in (8, 16, 32)]
    for o in outs[1:]:
        torch.testing.assert_close(o.rgb, outs[0].rgb, rtol=0, atol=1e-6)
        torch.testing.assert_close(o.alpha, outs[0].alpha, rtol=0, atol=1e-6)


def test_cpu_backend_is_deterministic(scene, cameras):
    g, cams = scene(n=40, seed=4).to(torch.float32), cameras(2).to(torch.float32)
    a = _render_and_grad(g, cams, "cpu")
    b = _render_and_grad(g, cams, "cpu", a[2])
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


def test_fast_exp_matches_libm():
    p = np.concatenate([np.linspace(0.0, 16.0, 20001), [1e-12, 5.54, 30.0, 1e9]])
    approx = np.array([_cpu_kernels.exp_neg(x) for x in p])
    exact = np.exp(-np.minimum(p, 16.0))
    assert np.max(np.abs(approx / exact - 1)) < 1e-9


def test_intersections_are_tile_major_and_depth_sorted(scene, cameras):
    g, cams = scene(n=60, seed=8).to(torch.float32), cameras(2, height=40, width=56).to(torch.float32)
    proj = _cpu.project(g, cams)
    isect = _cpu.intersect(proj, 40, 56, 16)
    depths = proj.depths.detach().reshape(-1).numpy()
    counts = np.diff(isect.cg_offsets)
    assert counts.sum() == isect.count == isect.tile_offsets[-1]
    for t in range(len(isect.tile_offsets) - 1):
        ids = isect.flat_ids[isect.tile_offsets[t]:isect.tile_offsets[t + 1]]
        assert np.all(np.diff(depths[ids]) >= 0)
        assert np.all(ids // 60 == t // 12)  # 4 x 3 tiles per camera
    # every pair appears once per tile it touches
    assert np.array_equal(np.bincount(isect.flat_ids, minlength=counts.size), counts)


def test_radix_argsort_is_a_stable_argsort():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 3000):
        keys = rng.integers(0, 50, n).astype(np.float32) * np.float32(0.37)  # many ties
        keys[: n // 4] = np.float32(0.0)
        out = np.empty(n, np.int32)
        _cpu_kernels.argsort_positive(keys, out)
        assert np.array_equal(out, np.argsort(keys, kind="stable"))
