"""What the DUSt3R-family networks share: one description of the architecture, its validation, orientation, and
the pointmap head.

DUSt3R's two-view network (:mod:`manyview.models.pairwise`) and Fast3R (:mod:`manyview.models.fast3r`) are both
a CroCo ViT encoder (patch embedding, 2D RoPE), a decoder whose hooked layers feed DPT heads, and heads that turn
four channels into a pointmap and a confidence. Their released config.json files describe this in two layouts
(Fast3R nests ``encoder_args`` / ``decoder_args`` / ``head_args``; DUSt3R is flat); each config class keeps its
own layout and translates it into a :class:`FamilySpec`, which is validated here, once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.nn.dpt import DPTHead

INF = float("inf")
RELEASED_DPT_WIDTHS = (256, 128, (96, 192, 384, 768))  # feature_dim, last_dim, layer_dims of the released heads
PATCH_EMBEDS = ("PatchEmbedDust3R", "ManyAR_PatchEmbed")
DEPTH_MODES = ("exp", "square", "linear")
CONF_MODES = ("exp", "sigmoid")


# ------------------------------------------------------------------------------------------------ the config
def rope_frequency(pos_embed: str) -> float:
    """``"RoPE100"`` -> 100.0."""
    return float(pos_embed[len("RoPE"):])


def dpt_hooks(depth: int) -> list[int]:
    """The layers the DPT heads read: the raw encoder tokens (0) and the decoder after depth/2, 3 depth/4, depth."""
    return [0, depth * 2 // 4, depth * 3 // 4, depth]


def dpt_widths(feature_dim: int | None, last_dim: int | None,
               layer_dims: list | None) -> tuple[int, int, list[int]]:
    """(feature_dim, last_dim, layer_dims), the released values where a config leaves them out."""
    feature, last, layers = RELEASED_DPT_WIDTHS
    return (feature if feature_dim is None else feature_dim, last if last_dim is None else last_dim,
            list(layers if layer_dims is None else layer_dims))


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """The architecture facts both config layouts describe, in one vocabulary."""

    patch_size: int
    patch_embed_cls: str
    pos_embed: str
    enc_embed_dim: int
    enc_depth: int
    enc_num_heads: int
    enc_mlp_ratio: float
    dec_embed_dim: int
    dec_depth: int
    dec_num_heads: int
    decoder_rope: bool  # DUSt3R's decoders rotate by patch position; Fast3R's fusion transformer does not
    head_type: str
    output_mode: str
    depth_mode: list
    conf_mode: list
    feature_dim: int | None = None
    last_dim: int | None = None
    layer_dims: list | None = None

    @property
    def rope_freq(self) -> float:
        return rope_frequency(self.pos_embed)

    @property
    def hooks(self) -> list[int]:
        return dpt_hooks(self.dec_depth)

    @property
    def dpt_widths(self) -> tuple[int, int, list[int]]:
        return dpt_widths(self.feature_dim, self.last_dim, self.layer_dims)

    def encoder_args(self) -> dict[str, Any]:
        """Keyword arguments of :class:`manyview.nn.vit.RoPEViTEncoder`."""
        return dict(patch_size=self.patch_size, embed_dim=self.enc_embed_dim, depth=self.enc_depth,
                    num_heads=self.enc_num_heads, mlp_ratio=self.enc_mlp_ratio, rope_freq=self.rope_freq)

    def problems(self) -> list[str]:
        """Everything wrong with this architecture, as short phrases (empty when it can be built)."""
        problems = []
        if self.output_mode != "pts3d" or self.head_type != "dpt":
            problems.append(f"head {self.head_type!r}/{self.output_mode!r} is not supported (only dpt/pts3d)")
        if self.patch_embed_cls not in PATCH_EMBEDS:
            problems.append(f"unknown patch_embed_cls {self.patch_embed_cls!r}")
        if not re.fullmatch(r"RoPE\d+(\.\d+)?", str(self.pos_embed)):
            problems.append(f"pos_embed {self.pos_embed!r} is not supported (expected RoPE<frequency>)")
        for name, dim, heads, rope in (("encoder", self.enc_embed_dim, self.enc_num_heads, True),
                                       ("decoder", self.dec_embed_dim, self.dec_num_heads, self.decoder_rope)):
            if heads < 1 or dim % heads:
                problems.append(f"{name} width {dim} is not divisible by its {heads} heads")
            elif rope and (dim // heads) % 4:
                problems.append(f"{name} head dimension {dim // heads} must be divisible by 4 for 2D RoPE")
        if self.enc_depth < 1:
            problems.append(f"encoder depth {self.enc_depth} must be >= 1")
        if len(set(self.hooks)) != 4:
            problems.append(f"decoder depth {self.dec_depth} gives repeated DPT hooks {self.hooks}; "
                            "use a depth of at least 3")
        if (len(self.depth_mode) != 3 or self.depth_mode[0] not in DEPTH_MODES
                or self.depth_mode[1] != -INF or self.depth_mode[2] != INF):
            problems.append(f"depth_mode {self.depth_mode!r} is not supported "
                            "(expected [exp|square|linear, -inf, inf])")
        if not self.conf_mode or len(self.conf_mode) != 3 or self.conf_mode[0] not in CONF_MODES:
            problems.append(f"conf_mode {self.conf_mode!r} is not supported (expected [exp|sigmoid, min, max])")
        if self.layer_dims is not None and len(self.layer_dims) != 4:
            problems.append("layer_dims must have four entries")
        return problems


def known_fields(klass: type, data: Mapping, unknown_message: str, path: str | os.PathLike | None) -> dict:
    """``data`` as keyword arguments of the dataclass ``klass``; keys that name no field raise
    ``ManyviewError(f"{unknown_message} {names}", path)``."""
    known = {f.name for f in dataclasses.fields(klass)}
    extra = sorted(set(data) - known)
    if extra:
        raise ManyviewError(f"{unknown_message} {', '.join(extra)}", path)
    return dict(data)


def build_config(klass: type, kwargs: Mapping, path: str | os.PathLike | None):
    """``klass(**kwargs)`` with the config file named in a validation error."""
    try:
        return klass(**kwargs)
    except ManyviewError as e:
        raise ManyviewError(e.message, path) from None


def without_unset(section) -> dict:
    """A config dataclass as config.json content: optional fields left unset (None) are left out, as released."""
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


# ------------------------------------------------------------------------------------------------ the images
def patch_grid(images: Tensor, patch_size: int) -> tuple[int, int]:
    """(..., H, W) -> the token grid (H / p, W / p); sizes that are not multiples of the patch are an error."""
    H, W = images.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ManyviewError(f"image size {H}x{W} is not a multiple of the patch size {patch_size}; resize or crop "
                            f"first (e.g. ImageLoadPolicy(patch_multiple={patch_size}))")
    return H // patch_size, W // patch_size


def stored_transposed(images: Tensor, true_shape: Tensor | None, what: str = "view") -> Tensor:
    """The family's one orientation rule, for the official list-of-views layout: which samples of a stored batch
    (B, 3, h, w) hold their picture transposed. Returns (B,) bool on the CPU.

    DUSt3R's and Fast3R's data loaders give each sample's real (H, W) as ``true_shape``. Under ``landscape_only``
    (their training setting, with ``ManyAR_PatchEmbed``) a portrait picture is stored transposed to landscape, so
    its ``true_shape`` is (w, h); one batch may mix such samples with landscape ones. The official patch embedding
    transposes them back and takes positions from the real portrait grid, and the head wrapper transposes only the
    outputs, for storage: the network always runs on the picture in its real orientation, and so do manyview's
    networks, whatever ``landscape_only`` says. Without ``true_shape`` every sample is taken as stored.
    """
    B, (h, w) = images.shape[0], images.shape[-2:]
    if true_shape is None:
        return torch.zeros(B, dtype=torch.bool)
    shape = torch.as_tensor(true_shape).cpu()
    if tuple(shape.shape) != (B, 2):
        raise ManyviewError(f"{what}: true_shape must be (B, 2) = ({B}, 2), got {tuple(shape.shape)}")
    as_stored = (shape[:, 0] == h) & (shape[:, 1] == w)
    transposed = (shape[:, 0] == w) & (shape[:, 1] == h) & ~as_stored
    bad = (~(as_stored | transposed)).nonzero().flatten().tolist()
    if bad:
        raise ManyviewError(f"{what}: true_shape {tuple(shape[bad[0]].tolist())} of sample {bad[0]} is neither the "
                            f"stored image size ({h}, {w}) nor its transpose")
    return transposed


# ------------------------------------------------------------------------------------------------ the head
def points_from_raw(xyz: Tensor, mode) -> Tensor:
    """(..., 3) raw -> points. ``exp``: x/||x|| * expm1(||x||) (the released parametrisation)."""
    kind = mode[0]
    if kind == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    unit = xyz / d.clamp(min=1e-8)
    return unit * (d.square() if kind == "square" else torch.expm1(d))


def confidence_from_raw(c: Tensor, mode) -> Tensor:
    """``exp``: vmin + exp(c) (clipped at vmax - vmin); ``sigmoid``: vmin + (vmax - vmin) sigmoid(c)."""
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + c.exp().clamp(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(c) + vmin


class PointmapHead(nn.Module):
    """DPT over the four hooked layers of a view -> pointmap and confidence (keys ``dpt.*``).

    ``float32``: run the DPT in float32 with autocast off, as DUSt3R does; otherwise it runs under the caller's
    autocast (Fast3R here) and only its output is cast to float32.
    """

    def __init__(self, spec: FamilySpec, float32: bool):
        super().__init__()
        feature_dim, last_dim, layer_dims = spec.dpt_widths
        dd = spec.dec_embed_dim
        self.float32 = float32
        self.depth_mode, self.conf_mode = list(spec.depth_mode), list(spec.conf_mode)
        self.dpt = DPTHead([spec.enc_embed_dim, dd, dd, dd], num_channels=4, patch_size=spec.patch_size,
                           feature_dim=feature_dim, last_dim=last_dim, layer_dims=layer_dims)

    def forward(self, layers: list[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """4 x (B, h*w, C_i) -> points (B, H, W, 3), confidence (B, H, W), in float32."""
        if self.float32:
            with torch.autocast(layers[0].device.type, enabled=False):
                out = self.dpt([t.float() for t in layers], grid).permute(0, 2, 3, 1)
        else:
            out = self.dpt(layers, grid).float().permute(0, 2, 3, 1)
        return points_from_raw(out[..., :3], self.depth_mode), confidence_from_raw(out[..., 3], self.conf_mode)
