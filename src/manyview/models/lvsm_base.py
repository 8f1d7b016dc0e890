"""What the LVSM family shares: the tokenisation of posed views, the output head, the user API and the weights hooks.

Views become tokens: each input view is patchified from 9 channels ``[2*rgb - 1, o x d, d]`` (image plus
Plücker rays), each target view from its 6 Plücker channels only; there are no positional embeddings, so
all geometry enters through the rays. A subclass supplies the transformer between tokens and head
(:meth:`LVSMBase.render_tokens`): :mod:`manyview.models.lvsm` (decoder-only, encoder-decoder) and
:mod:`manyview.models.efficient_lvsm`.

Conventions: images (B, V, 3, H, W) in [0, 1]; ``fxfycxcy`` (B, V, 4) in pixels; ``c2w`` (B, V, 4, 4) OpenCV;
rays through pixel centres (+0.5). The forward applies no pose normalisation: the released models expect
poses passed through ``normalize_poses`` (over inputs and targets together), as their data loader does.

Weights load through :class:`manyview.hub.HubMixin` (``from_pretrained`` / ``save_pretrained``); the released
checkpoint layouts are mapped by :mod:`manyview.models.lvsm_weights`. To load a checkpoint of any variant, use
:func:`manyview.models.lvsm_family.load_lvsm`.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.geometry.rays import pixel_rays, plucker_embedding
from manyview.hub import Checkpoint, HubMixin
from manyview.models.lvsm_checks import (check_cameras, check_input_cameras, check_size, check_views, reject,
                                         target_size)
from manyview.models.lvsm_config import VARIANT_NAMES, LVSMConfig, Variant, get_config
from manyview.models.lvsm_weights import check_variant, clean_state_dict, config_from_yaml, infer_config
from manyview.nn.transformer import TransformerBlock, init_linear_weights, layer_norm
from manyview.scene import Cameras


# --------------------------------------------------------------------------------------------- rays
def _rays(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    # camera geometry stays in the cameras' precision even under autocast (a bf16 R @ d loses ~3 digits)
    if c2w.is_meta or not torch.is_autocast_enabled(c2w.device.type):
        return pixel_rays(fxfycxcy, c2w, height, width, offset=0.5, normalize=True)
    with torch.autocast(c2w.device.type, enabled=False):
        return pixel_rays(fxfycxcy, c2w, height, width, offset=0.5, normalize=True)


def view_rays(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions through pixel centres, channels first: each (..., 3, H, W)."""
    o, d = _rays(fxfycxcy, c2w, height, width)
    return o.movedim(-1, -3), d.movedim(-1, -3)


def ray_conditioning(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Plücker [o x d, d] per pixel: (..., 6, H, W)."""
    o, d = _rays(fxfycxcy, c2w, height, width)
    return plucker_embedding(o, d, order="moment_direction").movedim(-1, -3)


def posed_images(images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> Tensor:
    """Input-view channels [2*rgb - 1, o x d, d]: images (..., 3, H, W) -> (..., 9, H, W)."""
    h, w = images.shape[-2:]
    return torch.cat([images * 2.0 - 1.0, ray_conditioning(fxfycxcy, c2w, h, w).to(images.dtype)], dim=-3)


def patch_tokenizer(in_channels: int, patch_size: int, d: int) -> nn.Sequential:
    """(B, V, C, H, W) -> (B, V, H/p * W/p, d): row-major patches, each flattened (patch row, patch col, channel)."""
    return nn.Sequential(
        Rearrange("b v c (hh ph) (ww pw) -> b v (hh ww) (ph pw c)", ph=patch_size, pw=patch_size),
        nn.Linear(in_channels * patch_size**2, d, bias=False),
    )


class LVSMBase(nn.Module, HubMixin, abc.ABC):
    """Shared tokenisation, output head, user API and weights hooks of the LVSM family.

    Subclasses implement ``render_tokens(inputs (B, Vin, N, d), targets (B, Vt, Nt, d), target_batch_size)``
    -> target tokens (B, Vt, Nt, d).
    """

    variant: Variant
    config_class = LVSMConfig
    input_tokenizer_name = "image_tokenizer"  # Efficient-LVSM calls it rgbp_tokenizer
    norm_affine = True  # LVSM LayerNorms keep a scale; Efficient-LVSM's have no parameters

    def __init__(self, config: LVSMConfig):
        super().__init__()
        if config.variant != self.variant:
            raise ManyviewError(f"{type(self).__name__} builds {VARIANT_NAMES[self.variant]} models, but the config "
                                f"is for {VARIANT_NAMES[config.variant]}")
        self.config = config
        p, d = config.patch_size, config.d
        setattr(self, self.input_tokenizer_name, patch_tokenizer(9, p, d))
        self.target_pose_tokenizer = patch_tokenizer(6, p, d)
        self.image_token_decoder = nn.Sequential(layer_norm(d, self.norm_affine), nn.Linear(d, p * p * 3, bias=False),
                                                 nn.Sigmoid())

    @property
    def input_tokenizer(self) -> nn.Module:
        return getattr(self, self.input_tokenizer_name)

    def _block(self) -> TransformerBlock:
        c = self.config
        return TransformerBlock(c.d, c.d_head, qk_norm=c.use_qk_norm, norm_affine=self.norm_affine)

    def _init_blocks(self, blocks: nn.ModuleList) -> None:
        """Official init: std 0.02, shrunk with depth as 0.02 / sqrt(2 (i + 1)) (``depth_init``) or
        0.02 / sqrt(2 n_layers)."""
        for i, block in enumerate(blocks):
            std = 0.02
            if self.config.special_init:
                std = 0.02 / (2 * (i + 1)) ** 0.5 if self.config.depth_init else 0.02 / (2 * len(blocks)) ** 0.5
            init_linear_weights(block, std)

    def _init_io(self) -> None:
        for m in (self.input_tokenizer, self.target_pose_tokenizer, self.image_token_decoder):
            init_linear_weights(m, 0.02)

    # ---------------------------------------------------------------- weights (see manyview.hub.HubMixin)
    @classmethod
    def _resolve_config(cls, config) -> LVSMConfig:
        """An LVSMConfig, a name from ``CONFIGS``, an official YAML config path, or a dict of fields."""
        if isinstance(config, (str, os.PathLike)) and Path(config).suffix.lower() in (".yaml", ".yml"):
            return config_from_yaml(config)
        if isinstance(config, str):
            return get_config(config)
        return super()._resolve_config(config)

    @classmethod
    def _remap_state_dict(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return clean_state_dict(tensors)

    @classmethod
    def _config_without_file(cls, checkpoint: Checkpoint) -> LVSMConfig:
        """Released checkpoints come without a config.json: the architecture is read off the tensor shapes."""
        return infer_config(clean_state_dict(checkpoint.tensors), checkpoint.weights)

    @classmethod
    def checkpoint_config(cls, checkpoint: Checkpoint, config=None) -> LVSMConfig:
        config = super().checkpoint_config(checkpoint, config)
        check_variant(clean_state_dict(checkpoint.tensors), config.variant, checkpoint.weights, against="config")
        own = getattr(cls, "variant", None)
        if own is not None and config.variant != own:
            raise ManyviewError(f"this is an {VARIANT_NAMES[config.variant]} checkpoint, but {cls.__name__} builds "
                                f"{VARIANT_NAMES[own]} models; load_lvsm picks the model from the checkpoint",
                                checkpoint.source)
        return config

    @classmethod
    def _build(cls, config: LVSMConfig) -> "LVSMBase":
        with torch.device("meta"):  # every tensor is about to be loaded: skip the random initialisation
            model = cls(config)
        return model.to_empty(device="cpu")

    def load_tensors(self, tensors, aliases=None, path=None, strict: bool = True) -> "LVSMBase":
        """Strict loading (see :meth:`HubMixin.load_tensors`), after checking the checkpoint is of this variant."""
        check_variant(clean_state_dict(dict(tensors)), self.variant, path)
        return super().load_tensors(tensors, aliases, path, strict=strict)

    # ---------------------------------------------------------------- tokens
    def tokenize_inputs(self, images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1] -> tokens (B, V, H W / p^2, d)."""
        dtype = self.input_tokenizer[1].weight.dtype
        return self.input_tokenizer(posed_images(images, fxfycxcy, c2w).to(dtype))

    def tokenize_targets(self, fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
        """Target cameras (B, V) -> ray tokens (B, V, H W / p^2, d)."""
        dtype = self.target_pose_tokenizer[1].weight.dtype
        return self.target_pose_tokenizer(ray_conditioning(fxfycxcy, c2w, height, width).to(dtype))

    def decode(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """tokens (B, V, N, d) -> RGB (B, V, 3, H, W) in (0, 1)."""
        p = self.config.patch_size
        return rearrange(self.image_token_decoder(tokens), "b v (h w) (p1 p2 c) -> b v c (h p1) (w p2)",
                         h=height // p, w=width // p, p1=p, p2=p, c=3)

    # ---------------------------------------------------------------- raw-tensor API (parity, training)
    def forward(self, images: Tensor, input_fxfycxcy: Tensor, input_c2w: Tensor, target_fxfycxcy: Tensor,
                target_c2w: Tensor, target_size: tuple[int, int] | None = None,
                target_batch_size: int | None = None) -> Tensor:
        """images (B, Vin, 3, H, W), cameras as tensors -> renders (B, Vt, 3, Ht, Wt); (Ht, Wt) default (H, W)."""
        p = self.config.patch_size
        check_views(images, input_fxfycxcy, input_c2w, p)
        b = images.shape[0]
        if target_c2w.dim() != 4:
            reject(f"target c2w must be (B, Vt, 4, 4), got {tuple(target_c2w.shape)}")
        check_cameras(target_fxfycxcy, target_c2w, (b, target_c2w.shape[1]), "target")
        h, w = images.shape[-2:] if target_size is None else target_size
        check_size(h, w, p, "target")
        inputs = self.tokenize_inputs(images, input_fxfycxcy, input_c2w)
        targets = self.tokenize_targets(target_fxfycxcy, target_c2w, h, w)
        return self.decode(self.render_tokens(inputs, targets, target_batch_size), h, w)

    @abc.abstractmethod
    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        """inputs (B, Vin, N, d), target ray tokens (B, Vt, Nt, d) -> target tokens (B, Vt, Nt, d)."""

    # ---------------------------------------------------------------- user API
    def render(self, images: Tensor, input_cameras: Cameras, target_cameras: Cameras,
               target_batch_size: int | None = None) -> Tensor:
        """Render new views.

        images (B, Vin, 3, H, W) in [0, 1]; input_cameras Cameras (B, Vin) for (H, W) images; target_cameras
        Cameras (B, Vt), all of one image size (a multiple of the patch size) -> RGB (B, Vt, 3, Ht, Wt).
        Targets are rendered ``target_batch_size`` views at a time (all at once by default): less memory,
        same result. Poses are used as given (see :func:`normalize_poses`).
        """
        check_input_cameras(images, input_cameras, self.config.patch_size)
        h, w = target_size(target_cameras, images.shape[0], self.config.patch_size)
        dtype = images.dtype
        return self(images, input_cameras.fxfycxcy.to(dtype), input_cameras.c2w.to(dtype),
                    target_cameras.fxfycxcy.to(dtype), target_cameras.c2w.to(dtype), (h, w), target_batch_size)


__all__ = ["LVSMBase", "patch_tokenizer", "posed_images", "ray_conditioning", "view_rays"]
