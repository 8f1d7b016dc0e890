"""The reference renderer: gradients (gradcheck) and the semantics, checked against closed forms.

The semantic tests run on every available backend, so they pin the fast backends to the same rules.
"""

from __future__ import annotations

import math

import pytest
import torch

from manyview.scene import Cameras
from manyview.splat import Gaussians, render

BACKENDS = ["reference", "cpu"]


def _gradcheck_scene(mode):
    gen = torch.Generator().manual_seed(16)  # a seed whose pairs keep clear of every threshold (asserted below)
    n = 9
    means = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([1.6, 1.2, 1.0])
    means[6] = torch.tensor([1.9, 0.1, 0.2])  # beyond the right border: the Jacobian clamp is active
    log_scales = torch.log(0.15 + 0.2 * torch.rand(n, 3, generator=gen, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    logits = torch.tensor([-1.0, -0.5, 4.0, 2.5, 3.0, -1.5, 0.5, 4.5, 4.0], dtype=torch.float64)
    dc = torch.randn(n, 1, 3, generator=gen, dtype=torch.float64) * 0.5
    rest = torch.randn(n, 3, 3, generator=gen, dtype=torch.float64) * 0.3
    g = Gaussians(means, log_scales, quats, logits, dc, rest)
    eyes = torch.tensor([[0.0, 0.0, -3.0], [0.8, 0.3, -2.8]], dtype=torch.float64)
    cams = Cameras.look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64),
                           torch.tensor([14.0, 14.0, 6.0, 5.0], dtype=torch.float64), (10, 12))
    return g, cams


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_reference_gradcheck(mode, statistics):
    g, cams = _gradcheck_scene(mode)
    m = statistics(g, cams, mode)
    # gradcheck perturbs by 1e-6: no pair may sit within reach of a threshold, or the check measures a jump
    assert m["alpha_min"] > 1e-3 and m["alpha_max"] > 1e-3 and m["box"] > 1e-3 and m["t_min"] > 1e-3, m
    assert m["fov_clamped"] > 0, m
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)

    def f(means, log_scales, quats, logits, dc, rest):
        out = render(Gaussians(means, log_scales, quats, logits, dc, rest), cams, background=bg, mode=mode,
                     backend="reference")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(t.clone().requires_grad_() for t in (g.means, g.log_scales, g.quats, g.opacity_logits,
                                                         g.sh_dc, g.sh_rest))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    out = render(g, cams, mode=mode, backend="reference")
    assert out.alpha.max() > 0.9 and (out.alpha > 0).float().mean() > 0.5  # the scene covers the images


def _single(opacity: float, scale: float, depth: float, offset=(0.0, 0.0, 0.0), color=(0.2, 0.4, 0.6)):
    cams = Cameras.look_at(torch.tensor([[0.0, 0.0, -depth]], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                           torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64),
                           torch.tensor([20.0, 20.0, 16.5, 12.5], dtype=torch.float64), (25, 33))
    logit = math.log(opacity / (1 - opacity))
    g = Gaussians(torch.tensor([offset], dtype=torch.float64), torch.full((1, 3), math.log(scale), dtype=torch.float64),
                  torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([logit], dtype=torch.float64),
                  ((torch.tensor(color, dtype=torch.float64) - 0.5) / 0.28209479177387814)[None, None],
                  torch.zeros(1, 0, 3, dtype=torch.float64))
    return g, cams


def _as(backend, g, cams):
    return (g, cams) if backend == "reference" else (g.to(torch.float32), cams.to(torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_gaussian_matches_the_ewa_closed_form(backend, mode):
    opacity, scale, depth = 0.3, 0.1, 2.0
    g, cams = _single(opacity, scale, depth)
    out = render(*_as(backend, g, cams), mode=mode, backend=backend)
    var = (20.0 * scale / depth) ** 2  # projected variance in px^2 (isotropic, on the optical axis)
    var_d = var + 0.3
    o = opacity * (math.sqrt(var * var / (var_d * var_d)) if mode == "antialiased" else 1.0)
    ys, xs = torch.meshgrid(torch.arange(25.0) + 0.5, torch.arange(33.0) + 0.5, indexing="ij")
    raw = o * torch.exp(-0.5 * ((xs - 16.5) ** 2 + (ys - 12.5) ** 2) / var_d)
    k = min(3.0, math.sqrt(2 * math.log(255 * o)))
    inside = ((xs - 16.5).abs() <= k * math.sqrt(var_d)) & ((ys - 12.5).abs() <= k * math.sqrt(var_d))
    expected = torch.where(inside & (raw >= 1 / 255), raw, torch.zeros_like(raw)).to(torch.float64)
    torch.testing.assert_close(out.alpha[0].double(), expected, rtol=0, atol=1e-6)
    colour = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    torch.testing.assert_close(out.rgb[0].double(), colour[:, None, None] * expected, rtol=0, atol=1e-6)
    hit = expected > 0
    torch.testing.assert_close(out.depth[0][hit].double(), torch.full_like(expected[hit], depth), rtol=1e-6, atol=0)
    assert out.depth[0][~hit].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_compositing_stops_before_transmittance_drops_below_1e_4(backend):
    # four wide Gaussians with alpha ~0.95 at the centre pixel, nearest first in colour order red, green, blue,
    # white: T after three is 1.25e-4, the fourth would take it to 6e-6 and must not be composited.
    g, cams = _single(0.95, 1.5, 4.0)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    zs = torch.tensor([-1.0, -0.5, 0.0, 0.5], dtype=torch.float64)
    g = Gaussians(torch.stack([torch.zeros(4), torch.zeros(4), zs], -1).double(), g.log_scales.expand(4, 3),
                  g.quats.expand(4, 4), g.opacity_logits.expand(4), ((colours - 0.5) / 0.28209479177387814)[:, None],
                  torch.zeros(4, 0, 3, dtype=torch.float64))
    out = render(*_as(backend, g, cams), backend=backend)
    centre = out.rgb[0, :, 12, 16].double()
    a = float(render(g.select(torch.tensor([0])), cams, backend="reference").alpha[0, 12, 16])
    expected = torch.tensor([a, a * (1 - a), a * (1 - a) ** 2], dtype=torch.float64)  # no white contribution
    torch.testing.assert_close(centre, expected, rtol=1e-5, atol=1e-7)
    assert (1 - a) ** 3 >= 1e-4 > (1 - a) ** 4
    # the corner pixel has lower alphas, never terminates, and composites all four Gaussians
    singles = [float(render(g.select(torch.tensor([i])), cams, backend="reference").alpha[0, 0, 0]) for i in range(4)]
    assert min(singles) > 0.01
    expected_alpha = 1 - math.prod(1 - a for a in singles)
    assert abs(out.alpha[0, 0, 0].item() - expected_alpha) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_is_clamped_at_0_99(backend):
    g, cams = _single(0.999, 0.5, 2.0)
    out = render(*_as(backend, g, cams), backend=backend)
    assert abs(out.alpha.max().item() - 0.99) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussians_at_the_near_plane_are_culled(backend):
    g, cams = _single(0.5, 0.01, 2.0, offset=(0.0, 0.0, -1.995))  # 5 mm in front of the camera
    out = render(*_as(backend, g, cams), backend=backend, near=0.01)
    assert out.alpha.max() == 0
    out = render(*_as(backend, g, cams), backend=backend, near=0.001)
    assert out.alpha.max() > 0


def test_reference_is_differentiable_with_respect_to_the_cameras():
    g, cams = _gradcheck_scene("classic")
    c2w = cams.c2w.clone().requires_grad_()
    out = render(g, cams.with_poses(c2w), backend="reference")
    out.rgb.sum().backward()
    assert torch.isfinite(c2w.grad).all() and c2w.grad.abs().sum() > 0
