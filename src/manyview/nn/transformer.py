"""Pre-LN transformer blocks with bias-free layers and per-head QK RMSNorm (LVSM family).

Attribute names follow the state-dict layout of the released LVSM / Efficient-LVSM checkpoints
(``to_qkv``, ``fc``, ``q_norm``, ``k_norm``, ``to_q``, ``to_kv``, ``mlp.mlp.0`` / ``mlp.mlp.2``, ``norm1`` ...), so
their weights load without renaming. Heads split the channel axis head-major: ``(h dh)``.

Tensors inside attention use the SDPA layout (B, heads, L, head_dim); block inputs/outputs are (B, L, d).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from manyview.nn.attention import attention


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis, computed in float32 (as the released models do under bf16)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight.type_as(x)


def layer_norm(dim: int, affine: bool) -> nn.LayerNorm:
    """LayerNorm without bias: LVSM keeps a learnable scale (``affine``), Efficient-LVSM keeps none."""
    if affine:
        return nn.LayerNorm(dim, bias=False)
    return nn.LayerNorm(dim, elementwise_affine=False)


class MLP(nn.Module):
    """Linear -> exact GELU -> Linear, no biases. Held in ``self.mlp`` so keys read ``mlp.mlp.{0,2}.weight``."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim * ratio, bias=False), nn.GELU(),
                                 nn.Linear(dim * ratio, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class _QKNorm(nn.Module):
    def __init__(self, dim: int, head_dim: int, qk_norm: bool):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of the head size {head_dim}")
        self.head_dim = head_dim
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(head_dim)
            self.k_norm = RMSNorm(head_dim)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, h*dh) -> (B, h, L, dh)
        return rearrange(x, "b l (h dh) -> b h l dh", dh=self.head_dim)

    def _norm_q(self, q: Tensor) -> Tensor:
        return self.q_norm(q) if self.qk_norm else q

    def _norm_k(self, k: Tensor) -> Tensor:
        return self.k_norm(k) if self.qk_norm else k


class SelfAttention(_QKNorm):
    """Multi-head self-attention: fused QKV projection, per-head RMSNorm on q and k, SDPA, output ``fc``."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True):
        super().__init__(dim, head_dim, qk_norm)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d) -> (B, L, d)
        q, k, v = (self._heads(t) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = attention(self._norm_q(q), self._norm_k(k), v)
        return self.fc(rearrange(out, "b h l dh -> b l (h dh)"))


class CrossAttention(_QKNorm):
    """Queries from one sequence, keys/values from another; ``kv`` is split out so keys/values can be cached."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True):
        super().__init__(dim, head_dim, qk_norm)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.fc = nn.Linear(dim, dim, bias=False)

    def kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context (B, Lk, d) -> keys (after k-norm) and values, each (B, heads, Lk, head_dim)."""
        k, v = (self._heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        return self._norm_k(k), v

    def attend(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """x (B, Lq, d) queries against cached k, v (B, heads, Lk, head_dim) -> (B, Lq, d)."""
        q = self._norm_q(self._heads(self.to_q(x)))
        out = attention(q, k, v)
        return self.fc(rearrange(out, "b h l dh -> b l (h dh)"))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.attend(x, *self.kv(context))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True, norm_affine: bool = True,
                 mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = layer_norm(dim, norm_affine)
        self.attn = SelfAttention(dim, head_dim, qk_norm)
        self.norm2 = layer_norm(dim, norm_affine)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SelfCrossBlock(nn.Module):
    """Efficient-LVSM target block: self-attention within each view, cross-attention of a scene's views to
    (cached) context keys/values, then the MLP. Views never attend to each other, so a view's output does not
    depend on which other views share the batch."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True, norm_affine: bool = False,
                 mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = layer_norm(dim, norm_affine)
        self.self_attn = SelfAttention(dim, head_dim, qk_norm)
        self.norm_q = layer_norm(dim, norm_affine)
        self.norm_kv = layer_norm(dim, norm_affine)
        self.cross_attn = CrossAttention(dim, head_dim, qk_norm)
        self.norm2 = layer_norm(dim, norm_affine)
        self.mlp = MLP(dim, mlp_ratio)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context tokens (B, Lk, d) -> cross-attention k, v (B, heads, Lk, head_dim)."""
        return self.cross_attn.kv(self.norm_kv(context))

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """x (B, V, N, d) view tokens; k, v (B, heads, Lk, head_dim) -> (B, V, N, d)."""
        b, n_views, n, d = x.shape
        x = x.reshape(b * n_views, n, d)
        x = x + self.self_attn(self.norm1(x))
        x = x.reshape(b, n_views * n, d)
        x = x + self.cross_attn.attend(self.norm_q(x), k, v)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(b, n_views, n, d)


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for every Linear weight in ``module`` (the LVSM family initialisation); zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


__all__ = ["RMSNorm", "MLP", "SelfAttention", "CrossAttention", "TransformerBlock", "SelfCrossBlock",
           "layer_norm", "init_linear_weights"]
