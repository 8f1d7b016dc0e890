"""Token embeddings: image patches to tokens with their grid positions, and the 1-D sin/cos embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError


def sincos_embedding_1d(positions: Tensor, dim: int) -> Tensor:
    """(..., dim) float64 embedding [sin(p w_k) | cos(p w_k)], w_k = 10000^(-k/(dim/2)), k < dim/2.

    The MAE / CroCo layout. Positions may be fractional: the embedding is a smooth function of p, so evaluating
    it between integers is exact interpolation of the table, not an approximation of it.
    """
    if dim % 2:
        raise ValueError(f"sin/cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0))
    angles = positions.to(torch.float64)[..., None] * omega
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def patch_positions(h: int, w: int, device=None) -> Tensor:
    """(h*w, 2) int64 (y, x) patch coordinates in row-major token order."""
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((y.reshape(-1), x.reshape(-1)), dim=-1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens via one strided convolution (state-dict key ``proj``)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) -> tokens (B, h*w, D), positions (B, h*w, 2) with h = H/p, w = W/p."""
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ManyviewError(f"image size {H}x{W} is not a multiple of the patch size {p}; resize or crop first")
        x = self.proj(images)
        pos = patch_positions(H // p, W // p, images.device).expand(images.shape[0], -1, -1)
        return x.flatten(2).transpose(1, 2), pos
