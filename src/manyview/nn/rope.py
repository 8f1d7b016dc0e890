"""2D rotary position embedding (RoPE2D) for patch tokens, as in CroCo / DUSt3R / Fast3R encoders.

Each head's channels are split in two halves: the first half is rotated by the token's row (y), the second by its
column (x). Within a half of size ``d`` the rotate-half convention pairs channel ``i`` with ``i + d/2`` and rotates
the pair by the angle ``pos * freq**(-2i/d)``. This is the pure-PyTorch formulation of the released code (not the
cuRoPE extension, which the Fast3R authors report corrupts predictions).

The cos/sin tables depend only on the positions, so a ViT computes them once per forward (:meth:`RoPE2D.tables`)
and every block applies them to q and k (:meth:`RoPE2D.apply`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RoPE2D(nn.Module):
    """Parameter-free 2D RoPE; ``freq`` is the base (100 for the released CroCo/DUSt3R/Fast3R encoders)."""

    def __init__(self, freq: float = 100.0):
        super().__init__()
        self.freq = float(freq)

    def tables(self, positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
        """positions (B, L, 2) as (y, x) -> cos, sin, each (B, 1, L, head_dim) float32."""
        if head_dim % 4:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {head_dim}")
        d = head_dim // 2
        inv_freq = 1.0 / (self.freq ** (torch.arange(0, d, 2, device=positions.device, dtype=torch.float32) / d))
        angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, L, 2, d/2): [y, x] x frequencies
        angles = torch.cat((angles, angles), dim=-1).flatten(-2)  # (B, L, D): [y-half | x-half], each [a | a]
        return angles.cos()[:, None], angles.sin()[:, None]

    @staticmethod
    def apply(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
        """x (B, heads, L, D) -> rotated x; rotate-half within each of the y and x halves."""
        cos, sin = tables
        q = x.unflatten(-1, (2, 2, -1))  # (..., half, pair, D/4)
        rotated = torch.stack((-q[..., 1, :], q[..., 0, :]), dim=-2).flatten(-3)
        return (x * cos + rotated * sin).to(x.dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x (B, heads, L, D), positions (B, L, 2) -> (B, heads, L, D)."""
        return self.apply(x, self.tables(positions, x.shape[-1]))

    def extra_repr(self) -> str:
        return f"freq={self.freq:g}"
