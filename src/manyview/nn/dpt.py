"""DPT dense-prediction head (Ranftl et al. 2021) in the DUSt3R / Fast3R variant and state-dict layout.

Four token maps (one per hooked transformer layer, each (B, h*w, C_i)) are reassembled at strides 4, 8, 16, 32
of the image (``act_postprocess``), projected to ``feature_dim`` (``scratch.layer{1..4}_rn``), fused coarse to fine
by residual refinement blocks that each upsample x2 (``scratch.refinenet{4..1}``), and a small conv stack
(``head``) produces full-resolution channels. Keys:

- ``act_postprocess.{0..3}.{0,1}`` (index 2 has only ``.0``), ``head.{0,2,4}``;
- ``scratch.layer{1..4}_rn`` and the alias ``scratch.layer_rn.{0..3}`` (the same convolutions, as in the
  released checkpoints; a loader must accept either name);
- ``scratch.refinenet{1..4}.{out_conv, resConfUnit{1,2}.conv{1,2}}``.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the refined skip input, refines, upsamples x2 (bilinear, align_corners) and mixes with a 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """tokens: 4 x (B, h*w, dim_tokens[i]) -> (B, num_channels, h*patch, w*patch)."""

    def __init__(self, dim_tokens: list[int], num_channels: int, patch_size: int = 16, feature_dim: int = 256,
                 last_dim: int = 128, layer_dims: list[int] = (96, 192, 384, 768)):
        super().__init__()
        if len(dim_tokens) != 4 or len(layer_dims) != 4:
            raise ValueError("DPT needs exactly four hooked layers")
        self.patch_size = patch_size
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),  # stride 4
            nn.Sequential(nn.Conv2d(dim_tokens[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),  # stride 8
            nn.Sequential(nn.Conv2d(dim_tokens[2], d2, 1)),  # stride 16
            nn.Sequential(nn.Conv2d(dim_tokens[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),  # stride 32
        ])
        scratch = nn.Module()
        for i, d in enumerate(layer_dims, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(d, feature_dim, 3, padding=1, bias=False))
        scratch.layer_rn = nn.ModuleList([scratch.layer1_rn, scratch.layer2_rn, scratch.layer3_rn, scratch.layer4_rn])
        for i in range(1, 5):
            setattr(scratch, f"refinenet{i}", FusionBlock(feature_dim))
        self.scratch = scratch
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            nn.Upsample(scale_factor=patch_size / 8, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, 1),
        )

    def forward(self, tokens: list[Tensor], grid: tuple[int, int]) -> Tensor:
        h, w = grid
        maps = [rearrange(t, "b (h w) c -> b c h w", h=h, w=w) for t in tokens]
        l1, l2, l3, l4 = [rn(post(m)) for post, rn, m in zip(self.act_postprocess, self.scratch.layer_rn, maps)]
        s = self.scratch
        # The stride-32 map of an odd grid upsamples one row/column too far: crop to the stride-16 grid.
        path = s.refinenet4(l4)[:, :, : l3.shape[2], : l3.shape[3]]
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return self.head(path)
