"""CroCo-style ViT encoder: patch embedding, pre-LN blocks with 2D RoPE (no absolute position embedding), final norm.

State-dict layout of CroCo / DUSt3R / Fast3R encoders: ``patch_embed.proj``, ``enc_blocks.{i}.*``, ``enc_norm``.
Because positions enter only through RoPE, the encoder accepts any image size that is a multiple of the patch.
"""

from __future__ import annotations

from torch import Tensor, nn

from manyview.nn.blocks import Block
from manyview.nn.embeddings import PatchEmbed
from manyview.nn.rope import RoPE2D


class RoPEViTEncoder(nn.Module):
    def __init__(self, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0, rope_freq: float = 100.0, norm_eps: float = 1e-6):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.rope = RoPE2D(rope_freq)
        self.enc_blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps, rope=self.rope)
            for _ in range(depth)
        )
        self.enc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) -> tokens (B, P, D) after ``enc_norm``, positions (B, P, 2) as (y, x)."""
        x, pos = self.patch_embed(images)
        tables = self.rope.tables(pos[:1], self.embed_dim // self.num_heads)  # same grid for every image
        for blk in self.enc_blocks:
            x = blk(x, tables)
        return self.enc_norm(x), pos
