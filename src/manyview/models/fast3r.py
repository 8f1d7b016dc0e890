"""Fast3R (Yang et al., CVPR 2025): N unordered images -> per-view pointmaps and confidences in one forward pass.

Assembled from shared blocks, weight-compatible with the released checkpoint (``jedyang97/Fast3R_ViT_Large_512``)::

    encoder               RoPEViTEncoder: each view on its own (CroCo ViT, patch 16, 2D RoPE), in chunks of images
    decoder               FusionTransformer: decoder_embed -> + image-index embedding -> all-to-all blocks over
                          the tokens of all views -> dec_norm
    downstream_head       PointmapHead (DPT): pointmap of every view in the camera frame of view 0 ("global")
    downstream_head_local PointmapHead (DPT): pointmap of every view in its own camera frame ("local")

The DPT heads read [raw encoder tokens, fusion outputs after blocks depth/2, 3*depth/4 and depth].

Image-index embedding: views are told apart only by a 1-D sin/cos embedding of an index, added to every token of a
view. The released model was trained with view 0 at index 0 and views 1..N-1 at distinct random indices from
{1..999}. Here:

- training (``decoder_args.random_image_idx_embedding``): that random draw, from the global torch RNG;
- inference: ``image_index_seed=None`` (default) gives indices 0..N-1 in input order, deterministic;
  an int seed gives the training-style random draw from a seeded generator;
- more views than the 1000-slot table: the sin/cos table is evaluated at fractional positions
  i * 999 / (N - 1), which is exact interpolation of the sinusoid (the seeded mode then permutes those positions);
- explicit ``image_ids`` (B, N) (int or fractional) override both.

Images: :meth:`Fast3R.forward` and :meth:`Fast3R.infer` take images in [0, 1] (the manyview convention) and
normalise to [-1, 1] inside; :meth:`Fast3R.forward_views` takes the official list-of-dicts form with ``img``
already in [-1, 1]. Height and width must be multiples of 16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.hub import HubMixin
from manyview.nn.blocks import Block, SelfAttention
from manyview.nn.dpt import DPTHead
from manyview.nn.embeddings import sincos_embedding_1d
from manyview.nn.vit import RoPEViTEncoder

INDEX_TABLE_SIZE = 1000  # slots of the released image-index table
_INF = float("inf")


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class EncoderArgs:
    """``encoder_args`` of the released config.json."""

    encoder_type: str = "croco"
    img_size: Any = 512  # training crop size; unused by the patch embedding (any multiple of 16 works)
    patch_size: int = 16
    patch_embed_cls: str = "PatchEmbedDust3R"
    embed_dim: int = 1024
    num_heads: int = 16
    depth: int = 24
    mlp_ratio: float = 4
    pos_embed: str = "RoPE100"
    attn_implementation: str = "flash_attention"  # every choice runs through SDPA here

    @property
    def rope_freq(self) -> float:
        return float(self.pos_embed[len("RoPE"):])


@dataclass
class DecoderArgs:
    """``decoder_args``: the fusion transformer."""

    decoder_type: str = "fast3r"
    random_image_idx_embedding: bool = True
    enc_embed_dim: int = 1024
    embed_dim: int = 1024
    num_heads: int = 16
    depth: int = 24
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    attn_implementation: str = "flash_attention"
    attn_bias_for_inference_enabled: bool = False

    @property
    def hooks(self) -> list[int]:
        d = self.depth
        return [0, d * 2 // 4, d * 3 // 4, d]


@dataclass
class HeadArgs:
    """``head_args``. ``feature_dim`` / ``last_dim`` / ``layer_dims`` are absent in the released config, which
    hard-codes 256 / 128 / [96, 192, 384, 768]; small presets set them."""

    head_type: str = "dpt"
    output_mode: str = "pts3d"
    landscape_only: bool = False
    depth_mode: list = field(default_factory=lambda: ["exp", -_INF, _INF])
    conf_mode: list = field(default_factory=lambda: ["exp", 1, _INF])
    patch_size: int = 16
    with_local_head: bool = True
    feature_dim: int | None = None
    last_dim: int | None = None
    layer_dims: list | None = None

    @property
    def dpt_widths(self) -> tuple[int, int, list[int]]:
        return (256 if self.feature_dim is None else self.feature_dim,
                128 if self.last_dim is None else self.last_dim,
                [96, 192, 384, 768] if self.layer_dims is None else list(self.layer_dims))


_SECTIONS = {"encoder_args": EncoderArgs, "decoder_args": DecoderArgs, "head_args": HeadArgs}


@dataclass
class Fast3RConfig:
    encoder_args: EncoderArgs = field(default_factory=EncoderArgs)
    decoder_args: DecoderArgs = field(default_factory=DecoderArgs)
    head_args: HeadArgs = field(default_factory=HeadArgs)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, data: Mapping, path: str | os.PathLike | None = None) -> "Fast3RConfig":
        """From the released config.json layout; unknown or missing sections and unknown fields are errors."""
        unknown = sorted(set(data) - set(_SECTIONS))
        missing = sorted(set(_SECTIONS) - set(data))
        if unknown or missing:
            what = [f"unknown keys {unknown}"] if unknown else []
            what += [f"missing sections {missing}"] if missing else []
            raise ManyviewError(f"Fast3R config: {'; '.join(what)} (expected exactly {sorted(_SECTIONS)})", path)
        sections = {}
        for name, klass in _SECTIONS.items():
            section = data[name]
            if not isinstance(section, Mapping):
                raise ManyviewError(f"Fast3R config: {name} must be an object", path)
            known = {f.name for f in dataclasses.fields(klass)}
            extra = sorted(set(section) - known)
            if extra:
                raise ManyviewError(f"Fast3R config: unknown fields in {name}: {', '.join(extra)}", path)
            sections[name] = klass(**section)
        try:
            return cls(**sections)
        except ManyviewError as e:
            raise ManyviewError(e.message, path) from None

    def to_dict(self) -> dict:
        """The released config.json layout; unset optional head widths are left out, as in the release."""
        out = {}
        for name in _SECTIONS:
            d = dataclasses.asdict(getattr(self, name))
            out[name] = {k: v for k, v in d.items() if v is not None}
        return out

    def validate(self) -> None:
        e, d, h = self.encoder_args, self.decoder_args, self.head_args
        problems = []
        if e.encoder_type != "croco":
            problems.append(f"encoder_type {e.encoder_type!r} is not supported (only 'croco')")
        if e.patch_embed_cls not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            problems.append(f"unknown patch_embed_cls {e.patch_embed_cls!r}")
        if not re.fullmatch(r"RoPE\d+(\.\d+)?", str(e.pos_embed)):
            problems.append(f"pos_embed {e.pos_embed!r} is not supported (expected RoPE<frequency>)")
        for name, a in (("encoder", e), ("decoder", d)):
            if a.attn_implementation not in ("pytorch_naive", "flash_attention", "pytorch_auto"):
                problems.append(f"unknown {name} attn_implementation {a.attn_implementation!r}")
            if a.embed_dim % a.num_heads:
                problems.append(f"{name} embed_dim {a.embed_dim} is not divisible by num_heads {a.num_heads}")
        if e.embed_dim % e.num_heads == 0 and (e.embed_dim // e.num_heads) % 4:
            problems.append("encoder head dimension must be divisible by 4 for 2D RoPE")
        if d.decoder_type != "fast3r":
            problems.append(f"decoder_type {d.decoder_type!r} is not supported (only 'fast3r')")
        if d.enc_embed_dim != e.embed_dim:
            problems.append(f"decoder enc_embed_dim {d.enc_embed_dim} != encoder embed_dim {e.embed_dim}")
        if d.depth < 2 or len(set(d.hooks)) != 4:
            problems.append(f"decoder depth {d.depth} gives repeated DPT hooks {d.hooks}; use depth >= 4")
        if d.attn_drop:
            problems.append("attn_drop > 0 is not supported (attention runs through fused SDPA kernels)")
        if d.embed_dim % 2:
            problems.append("decoder embed_dim must be even for the sin/cos image-index embedding")
        if h.head_type != "dpt" or h.output_mode != "pts3d":
            problems.append(f"head {h.head_type!r}/{h.output_mode!r} is not supported (only dpt/pts3d)")
        if h.patch_size != e.patch_size:
            problems.append(f"head patch_size {h.patch_size} != encoder patch_size {e.patch_size}")
        if (len(h.depth_mode) != 3 or h.depth_mode[0] not in ("exp", "square", "linear")
                or h.depth_mode[1] != -_INF or h.depth_mode[2] != _INF):
            problems.append(f"depth_mode {h.depth_mode!r} is not supported (expected [exp|square|linear, -inf, inf])")
        if not h.conf_mode or len(h.conf_mode) != 3 or h.conf_mode[0] not in ("exp", "sigmoid"):
            problems.append(f"conf_mode {h.conf_mode!r} is not supported (expected [exp|sigmoid, min, max])")
        if h.layer_dims is not None and len(h.layer_dims) != 4:
            problems.append("head layer_dims must have four entries")
        if problems:
            raise ManyviewError("invalid Fast3R config: " + "; ".join(problems))


def _preset(enc: tuple[int, int, int], dec: tuple[int, int, int], head: tuple[int, int, list[int]] | None,
            random_index: bool = True) -> Fast3RConfig:
    (ed, edepth, eh), (dd, ddepth, dh) = enc, dec
    head_args = HeadArgs() if head is None else HeadArgs(feature_dim=head[0], last_dim=head[1], layer_dims=head[2])
    return Fast3RConfig(
        EncoderArgs(embed_dim=ed, depth=edepth, num_heads=eh),
        DecoderArgs(enc_embed_dim=ed, embed_dim=dd, depth=ddepth, num_heads=dh,
                    random_image_idx_embedding=random_index),
        head_args,
    )


PRESETS = {
    # (dim, depth, heads) of encoder and fusion transformer; DPT (feature_dim, last_dim, layer_dims) or released.
    # tiny: small enough to train and test on a CPU; ~19 MB of float32 weights with both heads.
    "tiny": lambda: _preset((192, 4, 3), (128, 6, 4), (48, 24, [24, 48, 96, 192])),
    "small": lambda: _preset((384, 12, 6), (384, 12, 6), (128, 64, [48, 96, 192, 384])),
    # base: the official configs/model/fast3r.yaml (ViT-L encoder from DUSt3R, ViT-B fusion transformer).
    "base": lambda: _preset((1024, 24, 16), (768, 12, 12), None),
    # vit_large_512: jedyang97/Fast3R_ViT_Large_512.
    "vit_large_512": lambda: _preset((1024, 24, 16), (1024, 24, 16), None),
}


def fast3r_config(name: str) -> Fast3RConfig:
    if name not in PRESETS:
        raise ManyviewError(f"unknown Fast3R preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------- image indices
def image_index_positions(batch: int, num_views: int, seed: int | None = None, random: bool = False,
                          table_size: int = INDEX_TABLE_SIZE, generator: torch.Generator | None = None) -> Tensor:
    """(B, N) float64 index positions; view 0 always at 0.

    Sequential: 0..N-1, or i * (table_size-1)/(N-1) when N > table_size. Random (``random`` or an int ``seed``):
    views 1..N-1 get distinct positions drawn like the released training code, ``randperm(table_size-1)[:N-1]+1``
    (beyond the table: a random permutation of the fractional positions).
    """
    if num_views <= table_size:
        base = torch.arange(num_views, dtype=torch.float64)
        pool = torch.arange(1, table_size, dtype=torch.float64)
    else:
        base = torch.arange(num_views, dtype=torch.float64) * ((table_size - 1) / (num_views - 1))
        pool = base[1:]
    if seed is None and not random:
        return base.expand(batch, num_views).clone()
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    ids = torch.zeros(batch, num_views, dtype=torch.float64)
    for b in range(batch):
        ids[b, 1:] = pool[torch.randperm(len(pool), generator=generator)[: num_views - 1]]
    return ids


# --------------------------------------------------------------------------------------------------- modules
class FusionTransformer(nn.Module):
    """All-to-all pre-LN transformer over the tokens of all views (no positional encoding but the index embedding).

    Keys: ``decoder_embed``, ``dec_blocks.{i}``, ``dec_norm``. Block norms use eps 1e-5, ``dec_norm`` 1e-6,
    as released.
    """

    def __init__(self, a: DecoderArgs):
        super().__init__()
        head_dim = a.embed_dim // a.num_heads
        # Optional length biasing of the released code: a larger softmax scale at eval (off in the release).
        eval_scale = head_dim ** -0.5 * math.sqrt(math.log(137) / math.log(20)) \
            if a.attn_bias_for_inference_enabled else None
        self.decoder_embed = nn.Linear(a.enc_embed_dim, a.embed_dim)
        self.dec_blocks = nn.ModuleList(
            Block(a.embed_dim, a.num_heads, a.mlp_ratio, a.qkv_bias, norm_eps=1e-5, drop=a.drop, eval_scale=eval_scale)
            for _ in range(a.depth)
        )
        self.dec_norm = nn.LayerNorm(a.embed_dim, eps=1e-6)

    def forward(self, tokens: Tensor, index_embedding: Tensor, keep: list[int]) -> dict[int, Tensor]:
        """tokens (B, L, C_enc), index_embedding (B, L, D) or broadcastable -> {layer: (B, L, ·)} for layers in
        ``keep`` (0 = the raw encoder tokens; ``depth`` is after ``dec_norm``)."""
        out = {0: tokens} if 0 in keep else {}
        x = self.decoder_embed(tokens) + index_embedding
        depth = len(self.dec_blocks)
        for i, blk in enumerate(self.dec_blocks, start=1):
            x = blk(x)
            if i == depth:
                x = self.dec_norm(x)
            if i in keep:
                out[i] = x
        return out


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
    """DPT over four hooked layers -> pointmap and confidence (keys ``dpt.*``)."""

    def __init__(self, config: Fast3RConfig):
        super().__init__()
        e, d, h = config.encoder_args, config.decoder_args, config.head_args
        feature_dim, last_dim, layer_dims = h.dpt_widths
        self.depth_mode, self.conf_mode = list(h.depth_mode), list(h.conf_mode)
        self.dpt = DPTHead([e.embed_dim, d.embed_dim, d.embed_dim, d.embed_dim], num_channels=4,
                           patch_size=h.patch_size, feature_dim=feature_dim, last_dim=last_dim, layer_dims=layer_dims)

    def forward(self, layers: list[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """4 x (B, h*w, C_i) -> points (B, H, W, 3), confidence (B, H, W), in float32."""
        out = self.dpt(layers, grid).float().permute(0, 2, 3, 1)
        return points_from_raw(out[..., :3], self.depth_mode), confidence_from_raw(out[..., 3], self.conf_mode)


@dataclass
class Fast3ROutput:
    pts3d_global: Tensor  # (B, N, H, W, 3) in the camera frame of view 0
    conf_global: Tensor  # (B, N, H, W), > 1
    pts3d_local: Tensor | None  # (B, N, H, W, 3) each view in its own camera frame; None without a local head
    conf_local: Tensor | None  # (B, N, H, W)
    image_ids: Tensor  # (B, N) float64 image-index positions used


def training_image_size(config: Fast3RConfig) -> int:
    """The long side of the images the weights were trained on (``encoder_args.img_size``: an int or [H, W])."""
    size = config.encoder_args.img_size
    return int(max(size)) if isinstance(size, (list, tuple)) else int(size)


class Fast3R(nn.Module, HubMixin):
    """The Fast3R network. ``Fast3R("tiny")``, ``Fast3R(Fast3RConfig(...))`` or ``Fast3R.from_pretrained(path)``.

    ``encoder_chunk_size``: images per encoder pass; ``max_parallel_views_for_head``: images per DPT-head pass.
    Both bound activation memory independently of N; neither changes results.
    """

    config_class = Fast3RConfig

    def __init__(self, config: Fast3RConfig | str = "tiny"):
        super().__init__()
        self.config = fast3r_config(config) if isinstance(config, str) else config
        e, d, h = self.config.encoder_args, self.config.decoder_args, self.config.head_args
        self.encoder = RoPEViTEncoder(e.patch_size, e.embed_dim, e.depth, e.num_heads, e.mlp_ratio, e.rope_freq)
        self.decoder = FusionTransformer(d)
        self.downstream_head = PointmapHead(self.config)
        self.downstream_head_local = PointmapHead(self.config) if h.with_local_head else None
        self.encoder_chunk_size = 400
        self.max_parallel_views_for_head = 25
        # The released code computes every attention product under a CUDA bfloat16 autocast; do the same on CUDA
        # (set_attention_dtype(None) for float32 attention). No effect on CPU.
        self.set_attention_dtype(torch.bfloat16)

    @classmethod
    def _resolve_config(cls, config):
        return fast3r_config(config) if isinstance(config, str) else super()._resolve_config(config)

    def set_attention_dtype(self, dtype: torch.dtype | None) -> None:
        for m in self.modules():
            if isinstance(m, SelfAttention):
                m.attention_dtype = dtype

    @property
    def patch_size(self) -> int:
        return self.config.encoder_args.patch_size

    # --------------------------------------------------------------------------------------------- stages
    def encode(self, images: Tensor) -> Tensor:
        """images (B, n, 3, H, W) in [-1, 1] -> tokens (B, n, P, C_enc), encoded in chunks of images."""
        B, n, _, H, W = images.shape
        p = self.patch_size
        out = images.new_empty(B, n, (H // p) * (W // p), self.encoder.embed_dim)
        self._encode_into(images, out.view(B, -1, out.shape[-1]))
        return out

    def _encode_into(self, images: Tensor, out: Tensor) -> None:
        B, n = images.shape[:2]
        step = max(1, self.encoder_chunk_size // B)
        for v0 in range(0, n, step):
            v1 = min(n, v0 + step)
            tokens, _ = self.encoder(images[:, v0:v1].flatten(0, 1))  # (B*k, P, C)
            P = tokens.shape[1]
            out[:, v0 * P: v1 * P] = tokens.view(B, (v1 - v0) * P, -1).to(out.dtype)

    def index_embedding(self, image_ids: Tensor) -> Tensor:
        """(B, N) positions -> (B, N, D) float32 sin/cos embedding (computed in float64, like the released table)."""
        return sincos_embedding_1d(image_ids, self.config.decoder_args.embed_dim).float()

    def _image_ids(self, batch: int, num_views: int, image_ids: Tensor | None, seed: int | None) -> Tensor:
        if image_ids is not None:
            image_ids = torch.as_tensor(image_ids)
            if tuple(image_ids.shape) != (batch, num_views):
                raise ManyviewError(f"image_ids must have shape (B, N) = ({batch}, {num_views}), "
                                    f"got {tuple(image_ids.shape)}")
            return image_ids.to(torch.float64).cpu()
        if self.training:
            return image_index_positions(batch, num_views, random=self.config.decoder_args.random_image_idx_embedding)
        return image_index_positions(batch, num_views, seed=seed)

    def _run(self, groups: list[Tensor], image_ids: Tensor | None, seed: int | None) -> tuple[list, Tensor]:
        """groups: views of equal shape, each (B, n_g, 3, H_g, W_g) in [-1, 1], in view order.

        Returns per group (pts_g, conf_g, pts_l, conf_l) with (B, n_g, H, W, ·) and the (B, N) image ids."""
        B = groups[0].shape[0]
        p = self.patch_size
        landscape_only = self.config.head_args.landscape_only
        transposed = [landscape_only and g.shape[-2] > g.shape[-1] for g in groups]
        # landscape_only (the training config, with ManyAR_PatchEmbed): portrait views run transposed end to end.
        groups = [g.transpose(-1, -2) if t else g for g, t in zip(groups, transposed)]
        for g in groups:
            if g.shape[0] != B:
                raise ManyviewError("every view must have the same batch size")
            if g.shape[-2] % p or g.shape[-1] % p:
                raise ManyviewError(f"image size {g.shape[-2]}x{g.shape[-1]} is not a multiple of the patch size {p}")
        counts = [g.shape[1] for g in groups]
        grids = [(g.shape[-2] // p, g.shape[-1] // p) for g in groups]
        patches = [gh * gw for gh, gw in grids]
        ids = self._image_ids(B, sum(counts), image_ids, seed)

        tokens, offsets = self._encode_groups(groups, patches)  # (B, L, C_enc)
        per_view = torch.tensor([P for n, P in zip(counts, patches) for _ in range(n)], device=tokens.device)
        emb = self.index_embedding(ids).to(tokens.device).repeat_interleave(per_view, dim=1)  # (B, L, D)
        hooks = self.config.decoder_args.hooks
        layers = self.decoder(tokens, emb, keep=hooks)
        del emb
        layers = [layers[i] for i in hooks]

        results = []
        for n, P, grid, off, t in zip(counts, patches, grids, offsets, transposed):
            outs = self._heads([lay[:, off: off + n * P] for lay in layers], n, grid)
            if t:
                outs = [(x.transpose(2, 3), c.transpose(2, 3)) for x, c in outs]
            local = outs[1] if len(outs) > 1 else (None, None)
            results.append((*outs[0], *local))
        return results, ids

    def _encode_groups(self, groups: list[Tensor], patches: list[int]) -> tuple[Tensor, list[int]]:
        """Every view on its own, in chunks, written straight into the fusion sequence (B, L, C_enc)."""
        B, device_type = groups[0].shape[0], groups[0].device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else groups[0].dtype
        L = sum(g.shape[1] * P for g, P in zip(groups, patches))
        tokens = groups[0].new_empty(B, L, self.encoder.embed_dim, dtype=dtype)
        offsets, off = [], 0
        for g, P in zip(groups, patches):
            offsets.append(off)
            self._encode_into(g, tokens[:, off: off + g.shape[1] * P])
            off += g.shape[1] * P
        return tokens, offsets

    def _heads(self, layers: list[Tensor], n: int, grid: tuple[int, int]) -> list[tuple[Tensor, Tensor]]:
        """Hooked layers of n views of one grid, each (B, n*P, ·) -> [(pts (B, n, H, W, 3), conf (B, n, H, W))]
        per head, running at most ``max_parallel_views_for_head`` images at a time."""
        B, p = layers[0].shape[0], self.patch_size
        P, H, W = grid[0] * grid[1], grid[0] * p, grid[1] * p
        heads = [self.downstream_head] + ([self.downstream_head_local] if self.downstream_head_local else [])
        device = layers[0].device
        outs = [(torch.empty(B, n, H, W, 3, device=device), torch.empty(B, n, H, W, device=device)) for _ in heads]
        step = max(1, self.max_parallel_views_for_head // B)
        for v0 in range(0, n, step):
            v1 = min(n, v0 + step)
            chunk = [lay[:, v0 * P: v1 * P].reshape(B * (v1 - v0), P, -1) for lay in layers]
            for head, (pts, conf) in zip(heads, outs):
                x, c = head(chunk, grid)
                pts[:, v0:v1] = x.view(B, v1 - v0, H, W, 3)
                conf[:, v0:v1] = c.view(B, v1 - v0, H, W)
        return outs

    # ------------------------------------------------------------------------------------------- entries
    def forward(self, images: Tensor, image_ids: Tensor | None = None,
                image_index_seed: int | None = None) -> Fast3ROutput:
        """images (B, N, 3, H, W) in [0, 1], H and W multiples of 16 -> :class:`Fast3ROutput`."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ManyviewError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
        (res,), ids = self._run([images * 2 - 1], image_ids, image_index_seed)
        return Fast3ROutput(*res, image_ids=ids)

    def infer(self, images: Tensor, image_ids: Tensor | None = None, image_index_seed: int | None = None,
              dtype: torch.dtype | None = None, encoder_chunk_size: int | None = None,
              max_parallel_views_for_head: int | None = None) -> Fast3ROutput:
        """Inference entry: eval mode, ``torch.inference_mode``, optional autocast ``dtype`` (e.g. torch.bfloat16).

        images (N, 3, H, W) or (B, N, 3, H, W) in [0, 1]; outputs always have the batch dimension.
        """
        if images.dim() == 4:
            images = images[None]
        saved = (self.training, self.encoder_chunk_size, self.max_parallel_views_for_head)
        if encoder_chunk_size is not None:
            self.encoder_chunk_size = encoder_chunk_size
        if max_parallel_views_for_head is not None:
            self.max_parallel_views_for_head = max_parallel_views_for_head
        autocast = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        try:
            self.eval()
            with torch.inference_mode(), autocast:
                return self(images, image_ids=image_ids, image_index_seed=image_index_seed)
        finally:
            self.train(saved[0])
            self.encoder_chunk_size, self.max_parallel_views_for_head = saved[1:]

    def forward_views(self, views: list[dict], image_ids: Tensor | None = None,
                      image_index_seed: int | None = None) -> list[dict]:
        """The official interface: views = [{"img": (B, 3, H, W) in [-1, 1], ...}] (sizes may differ between
        views) -> per view {"pts3d_in_other_view", "conf", "pts3d_local", "conf_local"}."""
        if not views:
            raise ManyviewError("no views given")
        groups, start = [], 0
        imgs = [v["img"] for v in views]
        for i in range(1, len(imgs) + 1):  # consecutive views of one shape form a group
            if i == len(imgs) or imgs[i].shape != imgs[start].shape:
                groups.append(torch.stack(imgs[start:i], dim=1))
                start = i
        results, _ = self._run(groups, image_ids, image_index_seed)
        out = []
        for pts, conf, pts_l, conf_l in results:
            for j in range(pts.shape[1]):
                view = {"pts3d_in_other_view": pts[:, j], "conf": conf[:, j]}
                if pts_l is not None:
                    view.update(pts3d_local=pts_l[:, j], conf_local=conf_l[:, j])
                out.append(view)
        return out
