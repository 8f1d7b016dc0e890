"""The shared blocks Fast3R is assembled from: RoPE2D, sin/cos embedding, patch embedding, DPT head."""

import math

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.nn.dpt import DPTHead
from manyview.nn.embeddings import PatchEmbed, patch_positions, sincos_embedding_1d
from manyview.nn.rope import RoPE2D


def _rope_reference(x, pos, freq):
    """Explicit 2x2 rotations: channel i of a half (size d) pairs with i + d/2, angle p * freq^(-2i/d)."""
    out = x.clone()
    D = x.shape[-1]
    d = D // 2
    for half, axis in ((0, 0), (1, 1)):
        for i in range(d // 2):
            a, b = half * d + i, half * d + i + d // 2
            theta = pos[..., axis].double() * freq ** (-2 * i / d)  # (B, L)
            c, s = theta.cos()[:, None].float(), theta.sin()[:, None].float()
            out[..., a] = x[..., a] * c - x[..., b] * s
            out[..., b] = x[..., b] * c + x[..., a] * s
    return out


def test_rope_matches_explicit_rotations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 15, 16, generator=g)
    pos = patch_positions(3, 5)[None].expand(2, -1, -1)
    assert torch.allclose(RoPE2D(100.0)(x, pos), _rope_reference(x, pos, 100.0), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(1)
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 2, 1, 32, generator=g), torch.randn(1, 2, 1, 32, generator=g)
    p1, p2, shift = torch.tensor([[[3, 7]]]), torch.tensor([[[5, 1]]]), torch.tensor([[[11, -4]]])
    s = (rope(q, p1) * rope(k, p2)).sum()
    s_shifted = (rope(q, p1 + shift) * rope(k, p2 + shift)).sum()
    assert torch.allclose(s, s_shifted, atol=1e-4)
    assert torch.allclose(rope(q, p1).norm(), q.norm(), atol=1e-5)  # rotations keep norms
    assert not torch.allclose(rope(q, p1), q, atol=1e-3)


def test_sincos_table_layout():
    D = 64
    pos = np.arange(1000, dtype=float)
    omega = 1.0 / 10000 ** (np.arange(D // 2) / (D / 2))
    table = np.concatenate([np.sin(pos[:, None] * omega), np.cos(pos[:, None] * omega)], axis=1)
    ours = sincos_embedding_1d(torch.arange(1000), D).numpy()
    np.testing.assert_allclose(ours, table, atol=1e-12)


def test_patch_embed_positions_and_bad_size():
    pe = PatchEmbed(16, 8)
    tokens, pos = pe(torch.zeros(2, 3, 32, 48))
    assert tokens.shape == (2, 6, 8) and pos.shape == (2, 6, 2)
    assert pos[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]  # (y, x), row-major
    with pytest.raises(ManyviewError, match="multiple of the patch size"):
        pe(torch.zeros(1, 3, 30, 48))


@pytest.mark.parametrize("grid", [(3, 5), (2, 2), (1, 1), (4, 3)])
def test_dpt_output_size_and_aliases(grid):
    head = DPTHead([12, 8, 8, 8], num_channels=4, patch_size=16, feature_dim=8, last_dim=4, layer_dims=[4, 6, 8, 10])
    h, w = grid
    tokens = [torch.randn(2, h * w, c) for c in (12, 8, 8, 8)]
    assert head(tokens, grid).shape == (2, 4, 16 * h, 16 * w)
    for i in range(4):
        assert head.scratch.layer_rn[i] is getattr(head.scratch, f"layer{i + 1}_rn")
    assert math.isclose(head.head[1].scale_factor, 2.0)
