"""A DUSt3R-style two-view network (Wang et al., CVPR 2024): the pairwise baseline that Fast3R generalises.

Weight-compatible with DUSt3R's ``AsymmetricCroCo3DStereo`` (e.g. ``naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt``)::

    patch_embed, enc_blocks, enc_norm   shared CroCo ViT encoder (2D RoPE), each image encoded on its own
    decoder_embed                       Linear encoder width -> decoder width, shared by both views
    dec_blocks / dec_blocks2            two decoders, one per view; each block: self-attention, cross-attention to
                                        the other view's tokens of the previous layer, MLP (RoPE in both attentions)
    dec_norm                            LayerNorm on the last decoder outputs
    downstream_head1 / downstream_head2 DPT heads: view 1's pointmap and view 2's pointmap, both in view 1's camera
                                        frame, with confidence 1 + exp(c)

The DPT heads read [raw encoder tokens, decoder outputs after blocks depth/2, 3*depth/4 and depth]. The config
validation and the head are shared with Fast3R (:mod:`manyview.models.dust3r_family`).

Portrait pictures run in their real orientation (patches, and the RoPE positions of encoder and decoders, from the
real patch grid), as DUSt3R computes them under both configurations: its training setting ``landscape_only`` (with
``ManyAR_PatchEmbed``) only stores portrait pictures and outputs transposed to landscape
(:func:`~manyview.models.dust3r_family.stored_transposed`), so it changes nothing here.

The encoder's modules sit at the top level of the state dict (``patch_embed.*``, not ``encoder.patch_embed.*``)
because DUSt3R's model subclasses its encoder class (CroCoNet); this class subclasses
:class:`~manyview.nn.vit.RoPEViTEncoder` for the same reason. Checkpoint notes: DUSt3R's files also hold CroCo's
pre-training ``mask_token``, which DUSt3R never uses; it is dropped on load. CroCo-initialised files without
``dec_blocks2`` get it copied from ``dec_blocks``, as DUSt3R's own loader does. DUSt3R's ``.pth`` files pickle an
``argparse.Namespace`` beside the weights, which ``torch.load(weights_only=True)`` refuses; convert them to
safetensors first (the Hugging Face release already is).

Pixel convention: DUSt3R was trained with pixel (row r, column c) at (c, r) and the principal point at (W/2, H/2)
in those coordinates; :func:`manyview.recon.global_alignment` expects exactly that by default (``pixel_offset=0``).

Images are in [0, 1] (the manyview convention), normalised to [-1, 1] inside; H and W must be multiples of the
patch size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

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
    without_unset,
)
from manyview.models.fast3r import fast3r_config
from manyview.nn.blocks import DecoderBlock
from manyview.nn.embeddings import patch_positions
from manyview.nn.inference import inference
from manyview.nn.vit import RoPEViTEncoder

PairProgress = Callable[[int, int], None]  # (pairs done, pairs in all), called after each batch of pairs


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class PairwiseConfig:
    """DUSt3R's constructor arguments, i.e. the keys of its Hugging Face ``config.json``; defaults are the released
    ``DUSt3R_ViTLarge_BaseDecoder_512_dpt``. ``feature_dim`` / ``last_dim`` / ``layer_dims`` (DPT widths) are a
    manyview extension for small models; absent, the released 256 / 128 / [96, 192, 384, 768] apply."""

    output_mode: str = "pts3d"
    head_type: str = "dpt"
    depth_mode: list = field(default_factory=lambda: ["exp", -INF, INF])
    conf_mode: list = field(default_factory=lambda: ["exp", 1, INF])
    freeze: str = "none"
    landscape_only: bool = False
    patch_embed_cls: str = "PatchEmbedDust3R"
    img_size: Any = field(default_factory=lambda: [512, 512])  # training crop; any multiple of the patch works
    patch_size: int = 16
    mask_ratio: float = 0.9  # CroCo pre-training only; unused
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4
    norm_im2_in_dec: bool = True
    pos_embed: str = "RoPE100"
    feature_dim: int | None = None
    last_dim: int | None = None
    layer_dims: list | None = None

    def __post_init__(self):
        self.validate()

    @property
    def rope_freq(self) -> float:
        return rope_frequency(self.pos_embed)

    @property
    def hooks(self) -> list[int]:
        return dpt_hooks(self.dec_depth)

    @property
    def dpt_widths(self) -> tuple[int, int, list[int]]:
        return dpt_widths(self.feature_dim, self.last_dim, self.layer_dims)

    @property
    def family(self) -> FamilySpec:
        """The architecture in the vocabulary shared with Fast3R."""
        return FamilySpec(
            patch_size=self.patch_size, patch_embed_cls=self.patch_embed_cls, pos_embed=self.pos_embed,
            enc_embed_dim=self.enc_embed_dim, enc_depth=self.enc_depth, enc_num_heads=self.enc_num_heads,
            enc_mlp_ratio=self.mlp_ratio, dec_embed_dim=self.dec_embed_dim, dec_depth=self.dec_depth,
            dec_num_heads=self.dec_num_heads, decoder_rope=True, head_type=self.head_type,
            output_mode=self.output_mode, depth_mode=self.depth_mode, conf_mode=self.conf_mode,
            feature_dim=self.feature_dim, last_dim=self.last_dim, layer_dims=self.layer_dims)

    @classmethod
    def from_dict(cls, data: Mapping, path: str | os.PathLike | None = None) -> "PairwiseConfig":
        """From a DUSt3R-style config.json; unknown fields are errors, missing ones take the released values."""
        return build_config(cls, known_fields(cls, data, "pairwise (DUSt3R) config: unknown fields", path), path)

    def to_dict(self) -> dict:
        """config.json content; unset optional DPT widths are left out, as in the release."""
        return without_unset(self)

    @classmethod
    def matching(cls, fast3r_preset: str) -> "PairwiseConfig":
        """The pairwise network at the size of a Fast3R preset: the same encoder, decoders as wide and deep as
        Fast3R's fusion transformer, the same DPT heads (so "equal model size" compares architectures)."""
        f = fast3r_config(fast3r_preset)
        s = f.family
        return cls(depth_mode=list(s.depth_mode), conf_mode=list(s.conf_mode), patch_size=s.patch_size,
                   enc_embed_dim=s.enc_embed_dim, enc_depth=s.enc_depth, enc_num_heads=s.enc_num_heads,
                   dec_embed_dim=s.dec_embed_dim, dec_depth=s.dec_depth, dec_num_heads=s.dec_num_heads,
                   mlp_ratio=f.decoder_args.mlp_ratio, pos_embed=s.pos_embed, feature_dim=s.feature_dim,
                   last_dim=s.last_dim, layer_dims=None if s.layer_dims is None else list(s.layer_dims))

    def validate(self) -> None:
        problems = self.family.problems()
        if self.freeze not in ("none", "mask", "encoder"):
            problems.append(f"unknown freeze {self.freeze!r} (none, mask or encoder)")
        if problems:
            raise ManyviewError("invalid pairwise (DUSt3R) config: " + "; ".join(problems))


PRESETS = {
    # At the size of the Fast3R preset of the same name (see PairwiseConfig.matching).
    "tiny": lambda: PairwiseConfig.matching("tiny"),
    "small": lambda: PairwiseConfig.matching("small"),
    "base": lambda: PairwiseConfig.matching("base"),  # = DUSt3R 512 DPT's architecture (ViT-L encoder, ViT-B decoders)
    "vit_large_512": lambda: PairwiseConfig.matching("vit_large_512"),
    # naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt
    "dust3r_512_dpt": lambda: PairwiseConfig(),
}


def pairwise_config(name: str) -> PairwiseConfig:
    if name not in PRESETS:
        raise ManyviewError(f"unknown pairwise preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------------- outputs
class PairOutput(NamedTuple):
    pts1: Tensor  # (B, H1, W1, 3) view 1 in view 1's camera frame
    conf1: Tensor  # (B, H1, W1) > 1
    pts2_in_1: Tensor  # (B, H2, W2, 3) view 2 in view 1's camera frame
    conf2: Tensor  # (B, H2, W2) > 1


class PairPredictions(NamedTuple):
    """Every pair's outputs, stacked in the order :func:`manyview.recon.global_alignment` takes them."""

    edges: list[tuple[int, int]]  # E ordered pairs (i, j)
    pts_i: Tensor  # (E, H, W, 3) view i in view i's frame
    pts_j: Tensor  # (E, H, W, 3) view j in view i's frame
    conf_i: Tensor  # (E, H, W)
    conf_j: Tensor  # (E, H, W)


# --------------------------------------------------------------------------------------------------- network
class PairwiseNet(RoPEViTEncoder, HubMixin):
    """The two-view network. ``PairwiseNet("tiny")``, ``PairwiseNet(PairwiseConfig(...))``,
    ``PairwiseNet.from_pretrained(path_or_repo)``."""

    config_class = PairwiseConfig

    def __init__(self, config: PairwiseConfig | str = "tiny"):
        cfg = pairwise_config(config) if isinstance(config, str) else config
        spec = cfg.family
        super().__init__(**spec.encoder_args())
        self.config = cfg
        dd = cfg.dec_embed_dim
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, dd)
        make = lambda: nn.ModuleList(  # noqa: E731
            DecoderBlock(dd, cfg.dec_num_heads, cfg.mlp_ratio, qkv_bias=True, norm_eps=1e-6,
                         norm_mem=cfg.norm_im2_in_dec, rope=self.rope)
            for _ in range(cfg.dec_depth))
        self.dec_blocks = make()
        self.dec_blocks2 = make()
        self.dec_norm = nn.LayerNorm(dd, eps=1e-6)
        self.downstream_head1 = PointmapHead(spec, float32=True)
        self.downstream_head2 = PointmapHead(spec, float32=True)
        if cfg.freeze == "encoder":  # DUSt3R freezes the patch embedding and encoder blocks (not enc_norm)
            for p in list(self.patch_embed.parameters()) + list(self.enc_blocks.parameters()):
                p.requires_grad_(False)

    @classmethod
    def _resolve_config(cls, config):
        return pairwise_config(config) if isinstance(config, str) else super()._resolve_config(config)

    @classmethod
    def _remap_state_dict(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        tensors = {k: v for k, v in tensors.items() if k.split(".")[-1] != "mask_token"}
        if not any(".dec_blocks2." in f".{k}" for k in tensors):
            tensors.update({k.replace("dec_blocks.", "dec_blocks2.", 1): v for k, v in list(tensors.items())
                            if f".{k}".count(".dec_blocks.")})
        return tensors

    # ------------------------------------------------------------------------------------------- entries
    def forward(self, img1: Tensor, img2: Tensor) -> PairOutput:
        """A batch of pairs: img1, img2 (B, 3, H, W) in [0, 1] (the two sides may differ in size) ->
        (pts1, conf1, pts2_in_1, conf2), both pointmaps in img1's camera frame.

        Both images of a pair are encoded here, as DUSt3R does (one encoder batch when they share a shape).
        """
        for name, img in (("img1", img1), ("img2", img2)):
            if img.dim() != 4 or img.shape[1] != 3:
                raise ManyviewError(f"{name} must be (B, 3, H, W), got {tuple(img.shape)}")
        if img1.shape[0] != img2.shape[0]:
            raise ManyviewError(f"img1 and img2 must hold the same number of pairs, got {img1.shape[0]} and "
                                f"{img2.shape[0]}")
        g1, g2 = patch_grid(img1, self.patch_size), patch_grid(img2, self.patch_size)
        if img1.shape == img2.shape:
            f1, f2 = self.encode(torch.cat((img1, img2))).chunk(2)
        else:
            f1, f2 = self.encode(img1), self.encode(img2)
        return self.predict_pair(f1, g1, f2, g2)

    def infer_pairs(self, images: Tensor, edges: Sequence[tuple[int, int]], batch_size: int = 8,
                    cache_encoder: bool = True, dtype: torch.dtype | None = None,
                    progress: PairProgress | None = None) -> PairPredictions:
        """Run every pair (i, j) of ``edges`` over images (N, 3, H, W) in [0, 1], ``batch_size`` pairs at a time.

        ``cache_encoder`` (default): encode each image once and reuse its tokens in every pair (N encoder passes);
        False encodes both images of every pair, as DUSt3R's inference does (2E encoder passes, the reference the
        cache is tested against). Decoders and heads always run once per ordered pair, as in DUSt3R.
        Eval mode, ``torch.inference_mode``, optional autocast ``dtype``; outputs stay on the images' device.
        ``progress(done, total)`` is called after each batch with the number of pairs done.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ManyviewError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        n, _, H, W = images.shape
        edges = [(int(i), int(j)) for i, j in edges]
        if not edges:
            raise ManyviewError("no pairs given")
        bad = [e for e in edges if not (0 <= e[0] < n and 0 <= e[1] < n)]
        if bad:
            raise ManyviewError(f"pair {bad[0]} refers to a view outside 0..{n - 1}")
        if batch_size < 1:
            raise ManyviewError(f"batch_size must be >= 1, got {batch_size}")
        device = images.device
        E = len(edges)
        pts_i = torch.empty(E, H, W, 3, device=device)
        pts_j, conf_i, conf_j = torch.empty_like(pts_i), torch.empty(E, H, W, device=device), \
            torch.empty(E, H, W, device=device)
        with inference(self, device.type, dtype):
            grid = patch_grid(images, self.patch_size)
            tokens = torch.cat([self.encode(images[k: k + batch_size]) for k in range(0, n, batch_size)]) \
                if cache_encoder else None
            for b0 in range(0, E, batch_size):
                ii = torch.tensor([i for i, _ in edges[b0: b0 + batch_size]], device=device)
                jj = torch.tensor([j for _, j in edges[b0: b0 + batch_size]], device=device)
                if tokens is not None:
                    out = self.predict_pair(tokens[ii], grid, tokens[jj], grid)
                else:
                    out = self(images[ii], images[jj])
                sl = slice(b0, b0 + len(ii))
                pts_i[sl], conf_i[sl], pts_j[sl], conf_j[sl] = out
                if progress is not None:
                    progress(sl.stop, E)
        return PairPredictions(edges, pts_i, pts_j, conf_i, conf_j)

    # ---------------------------------------------------------------------------------------- the network
    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1], in their real orientation -> tokens (B, h*w, C_enc)."""
        patch_grid(images, self.patch_size)
        tokens, _ = RoPEViTEncoder.forward(self, images * 2 - 1)
        return tokens

    def decode(self, f1: Tensor, grid1: tuple[int, int], f2: Tensor,
               grid2: tuple[int, int]) -> tuple[list[Tensor], list[Tensor]]:
        """Encoder tokens of both views (B, L_k, C_enc) -> each view's four hooked layers (DUSt3R ``_decoder``).

        Both decoders read the previous layer's outputs of both views (block k of view 1 attends to view 2's
        tokens after block k-1, and vice versa). Layer 0 is the raw encoder output; the last is after ``dec_norm``.
        """
        head_dim = self.config.dec_embed_dim // self.config.dec_num_heads
        t1 = self.rope.tables(patch_positions(*grid1, f1.device)[None], head_dim)
        t2 = t1 if grid2 == grid1 else self.rope.tables(patch_positions(*grid2, f2.device)[None], head_dim)
        hooks, depth = self.config.hooks, self.config.dec_depth
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for k, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2), start=1):
            x1, x2 = blk1(x1, x2, t1, t2), blk2(x2, x1, t2, t1)
            if k == depth:
                x1, x2 = self.dec_norm(x1), self.dec_norm(x2)
            if k in hooks:
                out1.append(x1)
                out2.append(x2)
        return out1, out2

    def predict_pair(self, f1: Tensor, grid1: tuple[int, int], f2: Tensor, grid2: tuple[int, int]) -> PairOutput:
        """Encoder tokens of both views -> decoders -> heads -> :class:`PairOutput`."""
        layers1, layers2 = self.decode(f1, grid1, f2, grid2)
        return PairOutput(*self.downstream_head1(layers1, grid1), *self.downstream_head2(layers2, grid2))
