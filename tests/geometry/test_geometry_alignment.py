"""Umeyama Sim(3), pointmap normalisation and local -> global alignment."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyview.geometry.alignment import (
    align_pointmaps_local_to_global,
    apply_sim3,
    normalize_pointmap,
    percentile_mask,
    quantile_last,
    umeyama,
)
from manyview.geometry.rotation import random_rotation


def _random_sim3(g, batch=()):
    n = int(torch.tensor(batch).prod()) if batch else 1
    R = random_rotation(n, g).reshape(batch + (3, 3))
    t = torch.randn(batch + (3,), generator=g, dtype=torch.float64)
    s = torch.exp(torch.randn(batch, generator=g, dtype=torch.float64))
    return s, R, t


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_umeyama_recovers_random_sim3(seed, weighted):
    g = torch.Generator().manual_seed(seed)
    s, R, t = _random_sim3(g, (3,))
    src = torch.randn(3, 20, 3, generator=g, dtype=torch.float64)
    dst = apply_sim3(src, s, R, t)
    w = torch.rand(3, 20, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    s2, R2, t2 = umeyama(src, dst, w)
    assert torch.allclose(s2, s, rtol=1e-9)
    assert torch.allclose(R2, R, atol=1e-9)
    assert torch.allclose(t2, t, atol=1e-8)
    assert torch.allclose(torch.linalg.det(R2), torch.ones(3, dtype=torch.float64))


def test_umeyama_never_returns_a_reflection():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(30, 3, generator=g, dtype=torch.float64)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # a mirror image: best fit needs det -1
    s, R, t = umeyama(src, dst)
    assert torch.linalg.det(R) == pytest.approx(1.0)
    # The constrained fit is no better than the unconstrained reflection, but still a proper rotation.
    assert (apply_sim3(src, s, R, t) - dst).norm() > 1e-3


def test_umeyama_weights_select_points():
    g = torch.Generator().manual_seed(2)
    s, R, t = _random_sim3(g)
    src = torch.randn(40, 3, generator=g, dtype=torch.float64)
    dst = apply_sim3(src, s, R, t)
    dst[30:] += 5 * torch.randn(10, 3, generator=g, dtype=torch.float64)  # outliers
    w = torch.ones(40, dtype=torch.float64)
    w[30:] = 0
    s2, R2, t2 = umeyama(src, dst, w)
    assert torch.allclose(R2, R, atol=1e-9) and float(s2) == pytest.approx(float(s))
    s3, _, _ = umeyama(src, dst)
    assert abs(float(s3) - float(s)) > 1e-3  # without the weights the outliers pull the fit


def test_umeyama_rigid_only():
    g = torch.Generator().manual_seed(3)
    _, R, t = _random_sim3(g)
    src = torch.randn(25, 3, generator=g, dtype=torch.float64)
    dst = apply_sim3(src, torch.tensor(1.0, dtype=torch.float64), R, t)
    s, R2, t2 = umeyama(src, dst, with_scale=False)
    assert float(s) == 1.0
    assert torch.allclose(R2, R, atol=1e-9) and torch.allclose(t2, t, atol=1e-9)
    s, R2, _ = umeyama(src, 2.0 * dst, with_scale=False)
    assert float(s) == 1.0 and torch.allclose(R2, R, atol=1e-9)
    s_free, _, _ = umeyama(src, 2.0 * dst)
    assert float(s_free) == pytest.approx(2.0)


def test_umeyama_gradcheck():
    g = torch.Generator().manual_seed(4)
    src = torch.randn(8, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    s, R, t = _random_sim3(g)
    dst = (apply_sim3(src.detach(), s, R, t) + 0.05 * torch.randn(8, 3, generator=g, dtype=torch.float64))
    dst.requires_grad_(True)

    def fit(a, b):
        scale, rot, trans = umeyama(a, b)
        return torch.cat([scale.reshape(1), rot.reshape(-1), trans])

    assert torch.autograd.gradcheck(fit, (src, dst))


def test_quantile_last_matches_torch_quantile():
    g = torch.Generator().manual_seed(5)
    for n in (1, 2, 101, 3840):
        for dtype in (torch.float32, torch.float64):
            x = torch.rand(3, 4, n, generator=g, dtype=dtype)
            for q in (0.0, 0.1, 0.15, 0.5, 0.85, 0.9, 1.0):
                assert torch.equal(quantile_last(x, q), torch.quantile(x, q, dim=-1))


def test_percentile_mask_per_map():
    conf = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 10, 10)
    m = percentile_mask(conf, 90.0)
    assert m.shape == (2, 10, 10)
    assert m.flatten(1).sum(1).tolist() == [10, 10]  # the top tenth of each map, independently
    assert percentile_mask(conf, 0.0).all()
    with pytest.raises(ValueError):
        percentile_mask(conf, 120.0)


def test_normalize_pointmap_mean_distance():
    pts = torch.zeros(1, 2, 1, 2, 3)
    pts[0, 0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # distance 5
    pts[0, 0, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # distance 1
    pts[0, 1, 0, 0] = torch.tensor([0.0, 2.0, 0.0])  # distance 2
    pts[0, 1, 0, 1] = torch.tensor([100.0, 0.0, 0.0])  # invalid, excluded
    valid = torch.tensor([[[[True, True]], [[True, False]]]])
    out, scale = normalize_pointmap(pts, valid)
    assert scale.tolist() == [pytest.approx(8.0 / 3.0)]
    assert torch.allclose(out, pts / (8.0 / 3.0))  # invalid points are divided too
    _, med = normalize_pointmap(pts, valid, mode="median_distance")
    assert med.tolist() == [2.0]
    _, per_view = normalize_pointmap(pts, valid, per_view=True)
    assert per_view.tolist() == [[3.0, 2.0]]
    _, all_valid = normalize_pointmap(pts)
    assert all_valid.item() == pytest.approx(27.0)


def test_normalize_pointmap_is_scale_invariant():
    g = torch.Generator().manual_seed(6)
    pts = torch.randn(2, 3, 4, 5, 3, generator=g)
    a, _ = normalize_pointmap(pts)
    b, _ = normalize_pointmap(7.0 * pts)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.norm(dim=-1).flatten(1).mean(1), torch.ones(2), atol=1e-6)


def test_align_local_to_global_recovers_each_view():
    g = torch.Generator().manual_seed(7)
    local = torch.randn(3, 6, 8, 3, generator=g, dtype=torch.float64)
    s, R, t = _random_sim3(g, (3,))
    global_ = apply_sim3(local.flatten(1, 2), s, R, t).reshape(local.shape)
    conf = 1 + torch.rand(3, 6, 8, generator=g, dtype=torch.float64)
    global_noisy = global_.clone()
    low = ~percentile_mask(conf, 85.0)
    global_noisy[low] += torch.randn(int(low.sum()), 3, generator=g, dtype=torch.float64)  # only low-confidence pixels
    for weighted in (False, True):
        aligned, s2, R2, t2 = align_pointmaps_local_to_global(local, global_noisy, conf, 85.0, weighted=weighted)
        assert torch.allclose(s2, s) and torch.allclose(R2, R, atol=1e-9) and torch.allclose(t2, t, atol=1e-8)
        assert torch.allclose(aligned, global_, atol=1e-8)
    # Without the confidence filter the corrupted pixels spoil the fit.
    _, s3, _, _ = align_pointmaps_local_to_global(local, global_noisy)
    assert not torch.allclose(s3, s, rtol=1e-3)
