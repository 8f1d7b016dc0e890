"""Pre-LayerNorm transformer blocks with the timm / CroCo state-dict layout.

Keys: ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``. The fused ``qkv`` projection
is laid out [q | k | v], each split into heads contiguously, which is what released ViT checkpoints assume.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from manyview.nn.attention import attention
from manyview.nn.rope import RoPE2D


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention through :func:`manyview.nn.attention.attention` (SDPA).

    ``attention_dtype``: when set, the attention product on CUDA runs in that dtype and is cast back (the
    released Fast3R computes it under a CUDA bfloat16 autocast; on CPU that autocast, and this option, do nothing).
    ``eval_scale``: softmax scale used in eval mode instead of head_dim^-0.5 (Fast3R's optional length biasing).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope: RoPE2D | None = None,
                 proj_drop: float = 0.0, eval_scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope
        self.eval_scale = eval_scale
        self.attention_dtype: torch.dtype | None = None

    def forward(self, x: Tensor, rope_tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, L, C), rope_tables from :meth:`RoPE2D.tables` (ignored without ``rope``) -> (B, L, C)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        if self.rope is not None and rope_tables is not None:
            q, k = self.rope.apply(q, rope_tables), self.rope.apply(k, rope_tables)
        scale = self.eval_scale if (self.eval_scale is not None and not self.training) else None
        dtype = self.attention_dtype
        if dtype is not None and q.is_cuda and q.dtype != dtype:
            out = attention(q.to(dtype), k.to(dtype), v.to(dtype), scale=scale).to(q.dtype)
        else:
            out = attention(q, k, v, scale=scale)
        return self.proj_drop(self.proj(rearrange(out, "b h l d -> b l (h d)")))


class Block(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, rope: RoPE2D | None = None, drop: float = 0.0,
                 eval_scale: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, rope, drop, eval_scale)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, rope_tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope_tables)
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    """Multi-head attention from ``x`` (queries) to a memory sequence (keys and values), CroCo layout.

    Keys: ``projq``, ``projk``, ``projv`` (separate, since queries and memory differ), ``proj``. With ``rope``,
    queries are rotated by their own positions and keys by the memory's positions (relative position between
    the two images' patches).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope: RoPE2D | None = None,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def forward(self, x: Tensor, memory: Tensor, x_tables: tuple[Tensor, Tensor] | None = None,
                memory_tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, Lq, C), memory (B, Lk, C), RoPE tables of each (ignored without ``rope``) -> (B, Lq, C)."""
        split = lambda t: rearrange(t, "b l (h d) -> b h l d", h=self.num_heads)  # noqa: E731
        q, k, v = split(self.projq(x)), split(self.projk(memory)), split(self.projv(memory))
        if self.rope is not None and x_tables is not None and memory_tables is not None:
            q, k = self.rope.apply(q, x_tables), self.rope.apply(k, memory_tables)
        out = attention(q, k, v)
        return self.proj_drop(self.proj(rearrange(out, "b h l d -> b l (h d)")))


class DecoderBlock(nn.Module):
    """CroCo / DUSt3R decoder block: self-attention, cross-attention to the other view's tokens, MLP.

    x + attn(norm1(x)); x + cross_attn(norm2(x), norm_y(y)); x + mlp(norm3(x)). Keys ``norm1``, ``attn.*``,
    ``norm2``, ``cross_attn.*``, ``norm_y`` (the memory norm; an identity without ``norm_mem``), ``norm3``,
    ``mlp.*``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, norm_mem: bool = True, rope: RoPE2D | None = None, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, rope, drop)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, rope, drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.norm_y = nn.LayerNorm(dim, eps=norm_eps) if norm_mem else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, x_tables: tuple[Tensor, Tensor] | None = None,
                y_tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, Lx, C) this view's tokens, y (B, Ly, C) the other view's -> updated x (B, Lx, C)."""
        x = x + self.attn(self.norm1(x), x_tables)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, x_tables, y_tables)
        return x + self.mlp(self.norm3(x))
