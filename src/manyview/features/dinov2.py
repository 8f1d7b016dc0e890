"""DINOv2 ViT in the released torch.hub layout (``facebookresearch/dinov2``, ``dinov2_vit{s,b,l,g}14[_reg]``).

Keys, as in the hub checkpoints ``dinov2_vits14_pretrain.pth`` ... ``dinov2_vitg14_reg4_pretrain.pth``:
``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + 37 * 37, D) for the 518-pixel training size, ``register_tokens``
(1, 4, D) for the ``_reg`` variants, ``mask_token`` (1, D), ``patch_embed.proj``, ``blocks.{i}.norm1``,
``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.ls1.gamma``, ``blocks.{i}.norm2``,
``blocks.{i}.mlp.fc1`` / ``fc2`` (ViT-g: the SwiGLU ``mlp.w12`` / ``w3``), ``blocks.{i}.ls2.gamma``, ``norm``.

Forward as released: patch tokens, the class token prepended, the position embedding added (bicubic-resized to the
patch grid: with a 0.1 scale-factor offset and no antialiasing for the plain models, to the exact size with
antialiasing for the register models), the register tokens inserted after the class token, the blocks, the final
norm. The dense features are the normalised patch tokens (ConDense's ``patch`` mode), (N, D, H/14, W/14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.nn.blocks import Mlp, SelfAttention
from manyview.nn.embeddings import PatchEmbed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class DinoV2Config:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    num_register_tokens: int = 0
    patch_size: int = 14
    img_size: int = 518  # the size of the position-embedding table
    mlp_ratio: float = 4.0

    @property
    def interpolate_antialias(self) -> bool:
        return self.num_register_tokens > 0

    @property
    def interpolate_offset(self) -> float:
        return 0.0 if self.num_register_tokens > 0 else 0.1


_ARCHS = {"s": (384, 12, 6, "mlp"), "b": (768, 12, 12, "mlp"), "l": (1024, 24, 16, "mlp"),
          "g": (1536, 40, 24, "swiglu")}
DINOV2_CONFIGS: dict[str, DinoV2Config] = {
    f"dinov2-vit{a}14{'-reg' if reg else ''}": DinoV2Config(d, depth, heads, ffn, 4 if reg else 0)
    for a, (d, depth, heads, ffn) in _ARCHS.items() for reg in (False, True)
}


def hub_file_name(name: str) -> str:
    """The released checkpoint's file name of a config name: 'dinov2-vits14-reg' -> dinov2_vits14_reg4_pretrain.pth."""
    arch = name.removesuffix("-reg").replace("-", "_")
    return f"{arch}_reg4_pretrain.pth" if name.endswith("-reg") else f"{arch}_pretrain.pth"


def hub_url(name: str) -> str:
    arch = name.removesuffix("-reg").replace("-", "_")
    return f"{HUB_URL}/{arch}/{hub_file_name(name)}"


class LayerScale(nn.Module):
    """x * gamma, per channel (key ``gamma``)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """DINOv2's fused SwiGLU FFN: w12 -> (x1, x2), silu(x1) * x2 -> w3; hidden width rounded as released."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DinoBlock(nn.Module):
    """x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        d = cfg.embed_dim
        hidden = int(d * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = SelfAttention(d, cfg.num_heads, qkv_bias=True)
        self.ls1 = LayerScale(d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = SwiGLU(d, hidden) if cfg.ffn == "swiglu" else Mlp(d, hidden)
        self.ls2 = LayerScale(d)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """The DINOv2 backbone; ``forward`` gives dense patch features (N, D, H/14, W/14)."""

    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d)) \
            if cfg.num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # used only by DINOv2's masked training; kept for the keys
        self.blocks = nn.ModuleList(DinoBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    @staticmethod
    def normalize(images: Tensor) -> Tensor:
        mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = images.new_tensor(IMAGENET_STD)[:, None, None]
        return (images - mean) / std

    def position_embedding(self, h: int, w: int) -> Tensor:
        """(1, 1 + h*w, D): the class position and the patch table resized to an h x w grid, as released."""
        table = self.pos_embed.float()
        n = table.shape[1] - 1
        m = int(math.sqrt(n))
        if n != m * m:
            raise ManyviewError(f"pos_embed holds {n} patch positions, not a square grid")
        if h == m and w == m:
            return self.pos_embed
        grid = table[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        offset = self.cfg.interpolate_offset
        if offset:
            size = dict(scale_factor=((h + offset) / m, (w + offset) / m))
        else:
            size = dict(size=(h, w))
        grid = F.interpolate(grid, mode="bicubic", antialias=self.cfg.interpolate_antialias, **size)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((table[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def tokens(self, images: Tensor) -> tuple[Tensor, int, int]:
        """images (N, 3, H, W) in [0, 1], H and W multiples of 14 -> normalised tokens (N, 1 + R + h*w, D), h, w."""
        x, _ = self.patch_embed(self.normalize(images))
        h, w = images.shape[-2] // self.cfg.patch_size, images.shape[-1] // self.cfg.patch_size
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.position_embedding(h, w)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), h, w

    def forward(self, images: Tensor) -> Tensor:
        x, h, w = self.tokens(images)
        patches = x[:, 1 + self.cfg.num_register_tokens:]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)


__all__ = ["DINOV2_CONFIGS", "DinoBlock", "DinoV2", "DinoV2Config", "hub_file_name", "hub_url"]
