"""Fast3R (Yang et al., CVPR 2025): N unordered images -> per-view pointmaps and confidences in one forward pass.

Assembled from shared blocks, weight-compatible with the released checkpoint (``jedyang97/Fast3R_ViT_Large_512``)::

    encoder               RoPEViTEncoder: each view on its own (CroCo ViT, patch 16, 2D RoPE), in chunks of images
    decoder               FusionTransformer: decoder_embed -> + image-index embedding -> all-to-all blocks over
                          the tokens of all views -> dec_norm
    downstream_head       PointmapHead (DPT): pointmap of every view in the camera frame of view 0 ("global")
    downstream_head_local PointmapHead (DPT): pointmap of every view in its own camera frame ("local")

The DPT heads read [raw encoder tokens, fusion outputs after blocks depth/2, 3*depth/4 and depth]. The config
validation, the head and the portrait orientation are shared with DUSt3R's pairwise network
(:mod:`manyview.models.dust3r_family`).

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

Portrait pictures: the network runs on every picture in its real orientation (patches and RoPE positions from its
real grid), as the official code does under both configurations. The training configuration (``landscape_only``
with ``ManyAR_PatchEmbed``) changes only how the official code stores portrait pictures and their outputs:
transposed to landscape, with ``true_shape`` giving the real size; :meth:`Fast3R.forward_views` takes that layout
(:func:`~manyview.models.dust3r_family.stored_transposed`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.hub import HubMixin
from manyview.models.dust3r_family import (
    INF,
    FamilySpec,
    PointmapHead,
    build_config,
    dpt_hooks,
    dpt_widths,
    known_fields,
    patch_grid,
    rope_frequency,
    stored_transposed,
    without_unset,
)
from manyview.nn.blocks import Block, SelfAttention
from manyview.nn.embeddings import sincos_embedding_1d
from manyview.nn.inference import inference
from manyview.nn.vit import RoPEViTEncoder

INDEX_TABLE_SIZE = 1000  # slots of the released image-index table


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
        return rope_frequency(self.pos_embed)


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
        return dpt_hooks(self.depth)


@dataclass
class HeadArgs:
    """``head_args``. ``feature_dim`` / ``last_dim`` / ``layer_dims`` are absent in the released config, which
    hard-codes 256 / 128 / [96, 192, 384, 768]; small presets set them."""

    head_type: str = "dpt"
    output_mode: str = "pts3d"
    landscape_only: bool = False
    depth_mode: list = field(default_factory=lambda: ["exp", -INF, INF])
    conf_mode: list = field(default_factory=lambda: ["exp", 1, INF])
    patch_size: int = 16
    with_local_head: bool = True
    feature_dim: int | None = None
    last_dim: int | None = None
    layer_dims: list | None = None

    @property
    def dpt_widths(self) -> tuple[int, int, list[int]]:
        return dpt_widths(self.feature_dim, self.last_dim, self.layer_dims)


_SECTIONS = {"encoder_args": EncoderArgs, "decoder_args": DecoderArgs, "head_args": HeadArgs}
_ATTENTION_IMPLEMENTATIONS = ("pytorch_naive", "flash_attention", "pytorch_auto")


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
            sections[name] = klass(**known_fields(klass, section, f"Fast3R config: unknown fields in {name}:", path))
        return build_config(cls, sections, path)

    def to_dict(self) -> dict:
        """The released config.json layout; unset optional head widths are left out, as in the release."""
        return {name: without_unset(getattr(self, name)) for name in _SECTIONS}

    @property
    def family(self) -> FamilySpec:
        """The architecture in the vocabulary shared with DUSt3R's pairwise network."""
        e, d, h = self.encoder_args, self.decoder_args, self.head_args
        return FamilySpec(
            patch_size=e.patch_size, patch_embed_cls=e.patch_embed_cls, pos_embed=e.pos_embed,
            enc_embed_dim=e.embed_dim, enc_depth=e.depth, enc_num_heads=e.num_heads, enc_mlp_ratio=e.mlp_ratio,
            dec_embed_dim=d.embed_dim, dec_depth=d.depth, dec_num_heads=d.num_heads, decoder_rope=False,
            head_type=h.head_type, output_mode=h.output_mode, depth_mode=h.depth_mode, conf_mode=h.conf_mode,
            feature_dim=h.feature_dim, last_dim=h.last_dim, layer_dims=h.layer_dims)

    def validate(self) -> None:
        """The family's checks plus Fast3R's own (encoder and decoder types, attention options, widths that
        must agree between sections)."""
        e, d, h = self.encoder_args, self.decoder_args, self.head_args
        problems = []
        if e.encoder_type != "croco":
            problems.append(f"encoder_type {e.encoder_type!r} is not supported (only 'croco')")
        if d.decoder_type != "fast3r":
            problems.append(f"decoder_type {d.decoder_type!r} is not supported (only 'fast3r')")
        for name, a in (("encoder", e), ("decoder", d)):
            if a.attn_implementation not in _ATTENTION_IMPLEMENTATIONS:
                problems.append(f"unknown {name} attn_implementation {a.attn_implementation!r}")
        if d.enc_embed_dim != e.embed_dim:
            problems.append(f"decoder enc_embed_dim {d.enc_embed_dim} != encoder embed_dim {e.embed_dim}")
        if d.attn_drop:
            problems.append("attn_drop > 0 is not supported (attention runs through fused SDPA kernels)")
        if d.embed_dim % 2:
            problems.append("decoder embed_dim must be even for the sin/cos image-index embedding")
        if h.patch_size != e.patch_size:
            problems.append(f"head patch_size {h.patch_size} != encoder patch_size {e.patch_size}")
        problems += self.family.problems()
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


def training_image_size(config: Fast3RConfig) -> int:
    """The long side of the images the weights were trained on (``encoder_args.img_size``: an int or [H, W])."""
    size = config.encoder_args.img_size
    return int(max(size)) if isinstance(size, (list, tuple)) else int(size)


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


# ------------------------------------------------------------------------------------------------ the views
@dataclass(frozen=True, eq=False)
class ViewGroup:
    """Consecutive views of one image shape, as the network runs them."""

    images: Tensor  # (B, n, 3, H, W) in [-1, 1], each picture in its real orientation
    grid: tuple[int, int]  # token grid (H / patch, W / patch)

    @property
    def num_views(self) -> int:
        return self.images.shape[1]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_views * self.num_patches


def token_starts(views: list[ViewGroup]) -> list[int]:
    """Where each group's tokens begin in the fusion sequence (groups in view order)."""
    return list(itertools.accumulate((v.num_tokens for v in views[:-1]), initial=0))


def stack_consecutive(images: list[Tensor]) -> list[Tensor]:
    """(B, 3, H_i, W_i) views -> groups (B, n, 3, H, W) of consecutive views that share a shape."""
    groups, start = [], 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            groups.append(torch.stack(images[start:i], dim=1))
            start = i
    return groups


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


class GroupPointmaps(NamedTuple):
    """The heads' outputs for one group of n views."""

    pts3d_global: Tensor  # (B, n, H, W, 3)
    conf_global: Tensor  # (B, n, H, W)
    pts3d_local: Tensor | None  # None without a local head
    conf_local: Tensor | None


@dataclass
class Fast3ROutput:
    pts3d_global: Tensor  # (B, N, H, W, 3) in the camera frame of view 0
    conf_global: Tensor  # (B, N, H, W), > 1
    pts3d_local: Tensor | None  # (B, N, H, W, 3) each view in its own camera frame; None without a local head
    conf_local: Tensor | None  # (B, N, H, W)
    image_ids: Tensor  # (B, N) float64 image-index positions used


class Fast3R(nn.Module, HubMixin):
    """The Fast3R network. ``Fast3R("tiny")``, ``Fast3R(Fast3RConfig(...))`` or ``Fast3R.from_pretrained(path)``.

    Chunking bounds activation memory independently of N and never changes results: ``encoder_chunk_size``
    images per encoder pass, ``max_parallel_views_for_head`` images per DPT-head pass. Every entry takes both as
    arguments; the attributes below are the defaults used when an argument is None.
    """

    config_class = Fast3RConfig
    encoder_chunk_size: int = 400
    max_parallel_views_for_head: int = 25

    def __init__(self, config: Fast3RConfig | str = "tiny"):
        super().__init__()
        self.config = fast3r_config(config) if isinstance(config, str) else config
        spec = self.config.family
        self.encoder = RoPEViTEncoder(**spec.encoder_args())
        self.decoder = FusionTransformer(self.config.decoder_args)
        self.downstream_head = PointmapHead(spec, float32=False)
        self.downstream_head_local = PointmapHead(spec, float32=False) if self.config.head_args.with_local_head \
            else None
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

    # ------------------------------------------------------------------------------------------- entries
    def forward(self, images: Tensor, image_ids: Tensor | None = None, image_index_seed: int | None = None, *,
                encoder_chunk_size: int | None = None,
                max_parallel_views_for_head: int | None = None) -> Fast3ROutput:
        """images (B, N, 3, H, W) in [0, 1], H and W multiples of 16 -> :class:`Fast3ROutput`."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ManyviewError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
        (pointmaps,), ids = self.predict([images * 2 - 1], image_ids, image_index_seed, encoder_chunk_size,
                                         max_parallel_views_for_head)
        return Fast3ROutput(*pointmaps, image_ids=ids)

    def infer(self, images: Tensor, image_ids: Tensor | None = None, image_index_seed: int | None = None,
              dtype: torch.dtype | None = None, encoder_chunk_size: int | None = None,
              max_parallel_views_for_head: int | None = None) -> Fast3ROutput:
        """Inference entry: eval mode, ``torch.inference_mode``, optional autocast ``dtype`` (e.g. torch.bfloat16).

        images (N, 3, H, W) or (B, N, 3, H, W) in [0, 1]; outputs always have the batch dimension.
        """
        if images.dim() == 4:
            images = images[None]
        with inference(self, images.device.type, dtype):
            return self(images, image_ids, image_index_seed, encoder_chunk_size=encoder_chunk_size,
                        max_parallel_views_for_head=max_parallel_views_for_head)

    def forward_views(self, views: list[dict], image_ids: Tensor | None = None,
                      image_index_seed: int | None = None) -> list[dict]:
        """The official interface: views = [{"img": (B, 3, h, w) in [-1, 1], "true_shape": (B, 2) optional}]
        (sizes may differ between views) -> per view {"pts3d_in_other_view", "conf", "pts3d_local", "conf_local"},
        each (B, h, w, ...).

        ``true_shape`` is each sample's real (H, W): (h, w), or (w, h) for a portrait picture stored transposed to
        landscape, as the official loaders store it under ``landscape_only``; one view's batch may mix both. Every
        picture runs in its real orientation; a transposed sample's outputs come back transposed, in the stored
        layout, as the official heads return them.
        """
        if not views:
            raise ManyviewError("no views given")
        images = [v["img"] for v in views]
        batch = images[0].shape[0]
        for i, img in enumerate(images):
            if img.dim() != 4 or img.shape[1] != 3 or img.shape[0] != batch:
                raise ManyviewError(f"view {i}: img must be (B, 3, H, W) with the batch size B = {batch} of view 0, "
                                    f"got {tuple(img.shape)}")
        flips = torch.stack([stored_transposed(img, v.get("true_shape"), f"view {i}")
                             for i, (img, v) in enumerate(zip(images, views))], dim=1)  # (B, N): stored transposed
        ids = self._image_ids(batch, len(views), image_ids, image_index_seed)
        # Samples that share an orientation pattern run together, every picture in its real orientation.
        patterns = flips.unique(dim=0)
        parts = []  # per pattern: (its samples, per view the four outputs in the stored layout)
        for pattern in patterns:
            rows = (flips == pattern).all(dim=1).nonzero().flatten()
            flip = pattern.tolist()
            picked = images if len(patterns) == 1 else [img[rows.to(img.device)] for img in images]
            real = [img.transpose(-1, -2) if f else img for img, f in zip(picked, flip)]
            results, _ = self.predict(stack_consecutive(real), ids[rows])
            per_view = [[t if t is None else t[:, j] for t in group] for group in results
                        for j in range(group.pts3d_global.shape[1])]
            parts.append((rows, [[t if t is None or not f else t.transpose(1, 2) for t in outs]
                                 for outs, f in zip(per_view, flip)]))
        out = []
        for v in range(len(views)):
            tensors = [_gather_rows([(rows, stored[v][k]) for rows, stored in parts], batch) for k in range(4)]
            view = {"pts3d_in_other_view": tensors[0], "conf": tensors[1]}
            if tensors[2] is not None:
                view.update(pts3d_local=tensors[2], conf_local=tensors[3])
            out.append(view)
        return out

    # ---------------------------------------------------------------------------------------- the network
    def predict(self, groups: list[Tensor], image_ids: Tensor | None = None, image_index_seed: int | None = None,
                encoder_chunk_size: int | None = None,
                max_parallel_views_for_head: int | None = None) -> tuple[list[GroupPointmaps], Tensor]:
        """groups of views of one shape, each (B, n_g, 3, H_g, W_g) in [-1, 1], in view order -> each group's
        :class:`GroupPointmaps` and the (B, N) image-index positions used."""
        views = self.view_groups(groups)
        ids = self._image_ids(views[0].images.shape[0], sum(v.num_views for v in views), image_ids,
                              image_index_seed)
        tokens = self.encode_views(views, encoder_chunk_size)
        layers = self.fuse(tokens, ids, views)
        return [self.pointmaps(layers, view, start, max_parallel_views_for_head)
                for view, start in zip(views, token_starts(views))], ids

    def view_groups(self, groups: list[Tensor]) -> list[ViewGroup]:
        """Each group checked (one batch size, sizes multiples of the patch), with its token grid. No group is
        transposed: the network runs on every picture as given, in its real orientation."""
        batch = groups[0].shape[0]
        views = []
        for g in groups:
            if g.shape[0] != batch:
                raise ManyviewError("every view must have the same batch size")
            views.append(ViewGroup(g, patch_grid(g, self.patch_size)))
        return views

    def encode(self, images: Tensor, encoder_chunk_size: int | None = None) -> Tensor:
        """images (B, n, 3, H, W) in [-1, 1] -> tokens (B, n, P, C_enc), encoded in chunks of images."""
        B, n, _, H, W = images.shape
        p = self.patch_size
        out = images.new_empty(B, n, (H // p) * (W // p), self.encoder.embed_dim)
        self._encode_into(images, out.view(B, -1, out.shape[-1]), encoder_chunk_size)
        return out

    def encode_views(self, views: list[ViewGroup], encoder_chunk_size: int | None = None) -> Tensor:
        """Every view on its own -> the fusion sequence (B, L, C_enc), written in place chunk by chunk (no
        concatenated copy of all tokens), in the autocast dtype when autocast is on."""
        first = views[0].images
        device_type = first.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else first.dtype
        tokens = first.new_empty(first.shape[0], sum(v.num_tokens for v in views), self.encoder.embed_dim,
                                 dtype=dtype)
        for view, start in zip(views, token_starts(views)):
            self._encode_into(view.images, tokens[:, start: start + view.num_tokens], encoder_chunk_size)
        return tokens

    def _encode_into(self, images: Tensor, out: Tensor, encoder_chunk_size: int | None) -> None:
        """images (B, n, 3, H, W) -> out (B, n*P, C), ``encoder_chunk_size`` images per encoder pass."""
        chunk = self.encoder_chunk_size if encoder_chunk_size is None else encoder_chunk_size
        B, n = images.shape[:2]
        step = max(1, chunk // B)
        for v0 in range(0, n, step):
            v1 = min(n, v0 + step)
            tokens, _ = self.encoder(images[:, v0:v1].flatten(0, 1))  # (B*k, P, C)
            P = tokens.shape[1]
            out[:, v0 * P: v1 * P] = tokens.view(B, (v1 - v0) * P, -1).to(out.dtype)

    def index_embedding(self, image_ids: Tensor) -> Tensor:
        """(B, N) positions -> (B, N, D) float32 sin/cos embedding (computed in float64, like the released table)."""
        return sincos_embedding_1d(image_ids, self.config.decoder_args.embed_dim).float()

    def fuse(self, tokens: Tensor, image_ids: Tensor, views: list[ViewGroup]) -> list[Tensor]:
        """The fusion transformer over all views' tokens (B, L, C_enc), each view told apart by its index
        embedding -> the four layers the heads read, each (B, L, ·); layer 0 is the encoder output itself."""
        per_view = torch.tensor([v.num_patches for v in views for _ in range(v.num_views)], device=tokens.device)
        embedding = self.index_embedding(image_ids).to(tokens.device).repeat_interleave(per_view, dim=1)
        hooks = self.config.decoder_args.hooks
        layers = self.decoder(tokens, embedding, keep=hooks)
        return [layers[i] for i in hooks]

    def pointmaps(self, layers: list[Tensor], view: ViewGroup, start: int,
                  max_parallel_views_for_head: int | None = None) -> GroupPointmaps:
        """Both heads on one group's tokens (from ``start`` in the fused layers)."""
        group_layers = [lay[:, start: start + view.num_tokens] for lay in layers]
        outs = self._run_heads(group_layers, view.num_views, view.grid, max_parallel_views_for_head)
        local = outs[1] if len(outs) > 1 else (None, None)
        return GroupPointmaps(*outs[0], *local)

    def _run_heads(self, layers: list[Tensor], n: int, grid: tuple[int, int],
                   max_parallel_views_for_head: int | None) -> list[tuple[Tensor, Tensor]]:
        """Hooked layers of n views of one grid, each (B, n*P, ·) -> [(pts (B, n, H, W, 3), conf (B, n, H, W))]
        per head, at most ``max_parallel_views_for_head`` images per pass."""
        chunk = self.max_parallel_views_for_head if max_parallel_views_for_head is None \
            else max_parallel_views_for_head
        B, p = layers[0].shape[0], self.patch_size
        P, H, W = grid[0] * grid[1], grid[0] * p, grid[1] * p
        heads = [self.downstream_head] + ([self.downstream_head_local] if self.downstream_head_local else [])
        device = layers[0].device
        outs = [(torch.empty(B, n, H, W, 3, device=device), torch.empty(B, n, H, W, device=device)) for _ in heads]
        step = max(1, chunk // B)
        for v0 in range(0, n, step):
            v1 = min(n, v0 + step)
            chunk_layers = [lay[:, v0 * P: v1 * P].reshape(B * (v1 - v0), P, -1) for lay in layers]
            for head, (pts, conf) in zip(heads, outs):
                x, c = head(chunk_layers, grid)
                pts[:, v0:v1] = x.view(B, v1 - v0, H, W, 3)
                conf[:, v0:v1] = c.view(B, v1 - v0, H, W)
        return outs

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


def _gather_rows(parts: list[tuple[Tensor, Tensor | None]], batch: int) -> Tensor | None:
    """[(sample indices, rows of a (B, ...) tensor)] covering 0..B-1 -> the whole tensor (the only part as it is)."""
    if parts[0][1] is None:
        return None
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    whole = first.new_empty(batch, *first.shape[1:])
    for rows, values in parts:
        whole[rows.to(whole.device)] = values
    return whole
