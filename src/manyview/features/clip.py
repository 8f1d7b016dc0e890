"""The CLIP ViT image tower in the OpenAI / open_clip layout, as a dense feature network.

Keys (under ``visual.`` in a whole CLIP checkpoint, whose text tower is not read): ``conv1`` (no bias),
``class_embedding`` (W,), ``positional_embedding`` (1 + g*g, W), ``ln_pre``, ``transformer.resblocks.{i}.ln_1``,
``.attn.in_proj_weight`` / ``in_proj_bias`` (fused [q | k | v]), ``.attn.out_proj``, ``.ln_2``, ``.mlp.c_fc``,
``.mlp.c_proj``, ``ln_post``, ``proj`` (W, E). OpenAI's weights use QuickGELU (x * sigmoid(1.702 x)); open_clip's
LAION-trained ones use exact GELU: the config says which.

Dense features: the patch tokens after ``ln_post``, projected by ``proj`` into the joint image-text space,
(N, E, H/p, W/p); the position table is bicubic-resized to other grids (open_clip's ``resize_pos_embed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from manyview.nn.attention import attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionConfig:
    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    output_dim: int = 512
    quick_gelu: bool = True  # OpenAI weights; open_clip's LAION weights: False


_ARCHS = {"vitb32": (768, 12, 12, 32, 512), "vitb16": (768, 12, 12, 16, 512), "vitl14": (1024, 24, 16, 14, 768)}
CLIP_CONFIGS: dict[str, ClipVisionConfig] = {}
for _arch, (_w, _l, _h, _p, _e) in _ARCHS.items():
    CLIP_CONFIGS[f"clip-{_arch}"] = ClipVisionConfig(_w, _l, _h, _p, 224, _e, quick_gelu=True)
    CLIP_CONFIGS[f"clip-{_arch}-laion"] = ClipVisionConfig(_w, _l, _h, _p, 224, _e, quick_gelu=False)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class InProjAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), self-attention
    through :func:`manyview.nn.attention.attention`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)
        return self.out_proj(rearrange(attention(q, k, v), "b h l d -> b l (h d)"))


class ClipMlp(nn.Module):
    def __init__(self, dim: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.act = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.attn = InProjAttention(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.mlp = ClipMlp(cfg.width, cfg.quick_gelu)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ClipTransformer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ClipVision(nn.Module):
    """CLIP's image tower; ``forward`` gives dense patch features in the joint space (N, E, H/p, W/p)."""

    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.cfg = cfg
        w, grid = cfg.width, cfg.image_size // cfg.patch_size
        scale = w ** -0.5
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + grid * grid, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = ClipTransformer(cfg)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim))

    @staticmethod
    def normalize(images: Tensor) -> Tensor:
        mean = images.new_tensor(CLIP_MEAN)[:, None, None]
        std = images.new_tensor(CLIP_STD)[:, None, None]
        return (images - mean) / std

    def position_embedding(self, h: int, w: int) -> Tensor:
        table = self.positional_embedding
        m = int(math.sqrt(table.shape[0] - 1))
        if h == m and w == m:
            return table
        grid = table[1:].reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat((table[:1], grid[0].permute(1, 2, 0).reshape(h * w, -1).to(table.dtype)), dim=0)

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) in [0, 1], H and W multiples of the patch -> (N, E, H/p, W/p)."""
        x = self.conv1(self.normalize(images))
        n, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.class_embedding.to(x.dtype).expand(n, 1, -1), x), dim=1)
        x = self.ln_pre(x + self.position_embedding(h, w))
        x = self.ln_post(self.transformer(x)[:, 1:]) @ self.proj
        return x.transpose(1, 2).reshape(n, -1, h, w)


__all__ = ["CLIP_CONFIGS", "ClipVision", "ClipVisionConfig"]
