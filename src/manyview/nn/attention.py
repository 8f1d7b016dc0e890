"""Attention through ``scaled_dot_product_attention``, so PyTorch picks FlashAttention / memory-efficient
kernels where the device has them, and a readable explicit-softmax reference beside it for tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """q (B, heads, Lq, D), k/v (B, heads, Lk, D) -> (B, heads, Lq, D). Fused kernel where available."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                        scale: float | None = None) -> Tensor:
    """Explicit softmax(q k^T * scale) v; the ground truth that :func:`attention` is tested against."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(dim=-1) @ v
