"""Gaussians container, SH evaluation and initialisation from points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manyview.scene import PointCloud
from manyview.splat import Gaussians, from_points, random_in_box
from manyview.splat.sh import C0, eval_sh, rgb_to_sh, sh_basis, sh_to_rgb


def test_activations_and_shapes():
    g = random_in_box(10, sh_degree=2, seed=1)
    assert len(g) == 10 and g.sh_degree == 2 and g.sh.shape == (10, 9, 3)
    torch.testing.assert_close(g.scales, g.log_scales.exp())
    torch.testing.assert_close(g.opacities, torch.full((10,), 0.1))
    R = g.rotations
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(10, 3, 3), atol=1e-6, rtol=0)
    cov = g.covariances()
    torch.testing.assert_close(torch.linalg.eigvalsh(cov), g.scales.pow(2).sort(-1).values, rtol=1e-4, atol=1e-9)


def test_select_cat_and_sh_degree_changes():
    g = random_in_box(6, sh_degree=1, seed=2)
    parts = Gaussians.cat([g.select(torch.arange(0, 2)), g.select(torch.tensor([False, False, True, True, True, True]))])
    assert torch.equal(parts.means, g.means)
    up = g.with_sh_degree(3)
    assert up.sh_degree == 3 and torch.equal(up.sh_rest[:, :3], g.sh_rest) and up.sh_rest[:, 3:].abs().max() == 0
    assert torch.equal(up.with_sh_degree(1).sh_rest, g.sh_rest)
    with pytest.raises(ValueError, match="sh_rest"):
        Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, torch.zeros(6, 5, 3))
    with pytest.raises(ValueError, match="quats"):
        Gaussians(g.means, g.log_scales, g.quats[:, :3], g.opacity_logits, g.sh_dc, g.sh_rest)


def test_sh_basis_is_orthonormal_on_the_sphere():
    # Gauss-Legendre in cos(theta) x uniform phi integrates the degree <= 6 products exactly
    nodes, weights = np.polynomial.legendre.leggauss(8)
    phi = np.arange(16) * 2 * np.pi / 16
    ct, ph = np.meshgrid(nodes, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    dirs = torch.tensor(np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3))
    w = torch.tensor(np.repeat(weights, 16) * (2 * np.pi / 16))
    Y = sh_basis(dirs, 3)  # (n, 16)
    gram = (Y * w[:, None]).T @ Y
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)


def test_eval_sh_offset_clamp_and_degree_truncation():
    sh = torch.zeros(2, 16, 3)
    sh[0, 0] = rgb_to_sh(torch.tensor([0.25, 0.5, 1.0]))
    sh[1, 0] = -5.0  # below zero after the offset: clamped
    sh[:, 5:] = 7.0  # degree-2 and -3 terms, ignored at degree 1
    dirs = torch.randn(2, 3)
    out = eval_sh(sh, dirs, degree=1)
    torch.testing.assert_close(out[0], torch.tensor([0.25, 0.5, 1.0]))
    assert out[1].abs().max() == 0
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(torch.tensor(0.3))), torch.tensor(0.3))
    assert C0 == pytest.approx(0.5 / math.sqrt(math.pi))


def test_from_points_follows_the_3dgs_initialisation():
    gen = torch.Generator().manual_seed(3)
    xyz = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    rgb = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    g = from_points(PointCloud(xyz, rgb), sh_degree=3)
    d2 = torch.cdist(xyz, xyz).pow(2)
    d2.fill_diagonal_(math.inf)
    knn = d2.topk(3, largest=False).values.mean(1)
    torch.testing.assert_close(g.log_scales.double(), (0.5 * knn.log())[:, None].expand(40, 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.colors.double(), rgb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.opacities, torch.full((40,), 0.1))
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(40, 4))
    assert g.sh_rest.shape == (40, 15, 3) and g.sh_rest.abs().max() == 0 and g.dtype == torch.float32


def test_from_points_edge_cases():
    dup = torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [1.0, 0, 0]])
    g = from_points(dup)
    assert torch.isfinite(g.log_scales).all()
    torch.testing.assert_close(g.log_scales[0], torch.full((3,), 0.5 * math.log(1e-7)))  # 3DGS's clamp
    torch.testing.assert_close(g.colors, torch.full((5, 3), 0.5))  # no colours: grey
    assert len(from_points(torch.zeros(0, 3))) == 0
    assert torch.isfinite(from_points(torch.zeros(1, 3)).log_scales).all()


def test_random_in_box_stays_in_the_box_and_is_seeded():
    a = random_in_box(200, low=(-1, 0, 2), high=(1, 1, 3), seed=5)
    assert (a.means >= torch.tensor([-1.0, 0, 2])).all() and (a.means <= torch.tensor([1.0, 1, 3])).all()
    assert torch.equal(a.means, random_in_box(200, low=(-1, 0, 2), high=(1, 1, 3), seed=5).means)
