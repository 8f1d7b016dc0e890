"""Efficient-LVSM: LVSM with a dual-stream transformer and a KV cache for incremental input views.

Two streams of ``n_layer`` blocks run in lockstep. The input stream (``input_self_attn_blocks``) applies
self-attention *within* each input view; the target stream (``self_cross_blocks``) applies self-attention within
each target view, then cross-attention from all of a scene's target tokens to LayerNorm(input tokens of the same
layer), then an MLP. Input tokens never see other views or targets, so the per-layer cross-attention keys and
values of a view depend on that view alone: they can be computed once, cached, and extended one view at a time
(:class:`InputViewCache`) with results identical to encoding all views together. Targets never see each other, so
they can be rendered in any batches.

Key layout of Ayakaee/Efficient-LVSM (``rgbp_tokenizer``, ``input_self_attn_blocks``, ``self_cross_blocks``;
LayerNorms without parameters). Tokenisation, head and conventions as in :mod:`manyview.models.lvsm_base`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.models.lvsm_base import LVSMBase
from manyview.models.lvsm_checks import (check_cameras, check_input_cameras, check_size, check_views, chunks, reject,
                                         target_size)
from manyview.models.lvsm_config import CONFIGS, LVSMConfig
from manyview.nn.kv_cache import KVCache
from manyview.nn.transformer import SelfCrossBlock
from manyview.scene import Cameras


class EfficientLVSM(LVSMBase):
    variant = "efficient"
    input_tokenizer_name = "rgbp_tokenizer"
    norm_affine = False

    def __init__(self, config: LVSMConfig = CONFIGS["efficient-lvsm"]):
        super().__init__(config)
        c = config
        self.self_cross_blocks = nn.ModuleList(
            [SelfCrossBlock(c.d, c.d_head, qk_norm=c.use_qk_norm, norm_affine=False) for _ in range(c.n_layer)])
        self.input_self_attn_blocks = nn.ModuleList([self._block() for _ in range(c.n_layer)])
        # official init: tokenisers, head and target stream as LVSM; the input stream keeps PyTorch's default
        self._init_io()
        self._init_blocks(self.self_cross_blocks)

    # ---------------------------------------------------------------- the two streams
    def input_stream(self, tokens: Tensor):
        """Input tokens (B, V, N, d) -> per layer the cross-attention (k, v), each (B, heads, V*N, head_dim)."""
        b, v, n, d = tokens.shape
        x = tokens.reshape(b * v, n, d)
        for input_block, target_block in zip(self.input_self_attn_blocks, self.self_cross_blocks):
            x = input_block(x)  # within each view
            yield target_block.context_kv(x.reshape(b, v * n, d))

    def target_stream(self, kv: KVCache, targets: Tensor, target_batch_size: int | None = None) -> Tensor:
        """Target ray tokens (B, Vt, Nt, d) against cached inputs -> target tokens (B, Vt, Nt, d)."""
        out = []
        for sl in chunks(targets.shape[1], target_batch_size):
            x = targets[:, sl]
            for layer, block in enumerate(self.self_cross_blocks):
                x = block(x, kv.keys(layer), kv.values(layer))
            out.append(x)
        return torch.cat(out, dim=1)

    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        kv = KVCache(self.config.n_layer)
        for layer, (k, v) in enumerate(self.input_stream(inputs)):
            kv.append(layer, k, v)
        return self.target_stream(kv, targets, target_batch_size)

    # ---------------------------------------------------------------- cache API
    def encode(self, images: Tensor, cameras: Cameras) -> "InputViewCache":
        """Posed input views (B, V, 3, H, W) in [0, 1] with Cameras (B, V) -> a cache to render from / add to."""
        check_input_cameras(images, cameras, self.config.patch_size)
        return InputViewCache(self, images.shape[0]).add(images, cameras)

    def encode_tensors(self, images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> "InputViewCache":
        """:meth:`encode` with raw tensors: fxfycxcy (B, V, 4), c2w (B, V, 4, 4)."""
        cache = InputViewCache(self, images.shape[0] if isinstance(images, Tensor) and images.dim() == 5 else 0)
        return cache.add_tensors(images, fxfycxcy, c2w)

    def render_cache(self, cache: "InputViewCache", target_fxfycxcy: Tensor, target_c2w: Tensor,
                     target_size: tuple[int, int], target_batch_size: int | None = None) -> Tensor:
        """Render targets (B, Vt) given as tensors from a cache -> (B, Vt, 3, H, W)."""
        if cache.model is not self:
            reject("this cache was built by a different model; its keys and values do not fit this one")
        if cache.n_views == 0:
            reject("the input-view cache is empty: add at least one posed view before rendering")
        if target_c2w.dim() != 4:
            reject(f"target c2w must be (B, Vt, 4, 4), got {tuple(target_c2w.shape)}")
        check_cameras(target_fxfycxcy, target_c2w, (cache.batch_size, target_c2w.shape[1]), "target")
        h, w = target_size
        check_size(h, w, self.config.patch_size, "target")
        targets = self.tokenize_targets(target_fxfycxcy, target_c2w, h, w)
        return self.decode(self.target_stream(cache.kv, targets, target_batch_size), h, w)

    def render(self, inputs, *cameras: Cameras, target_batch_size: int | None = None) -> Tensor:
        """``render(images, input_cameras, target_cameras)`` or ``render(cache, target_cameras)``.

        images (B, Vin, 3, H, W) in [0, 1] with Cameras (B, Vin), or an :class:`InputViewCache`; target Cameras
        (B, Vt) of one image size -> RGB (B, Vt, 3, Ht, Wt).
        """
        if isinstance(inputs, InputViewCache):
            if len(cameras) != 1:
                reject("render(cache, target_cameras) takes exactly one Cameras after the cache")
            target_cameras = cameras[0]
            h, w = target_size(target_cameras, inputs.batch_size, self.config.patch_size)
            dtype = self.target_pose_tokenizer[1].weight.dtype
            return self.render_cache(inputs, target_cameras.fxfycxcy.to(dtype), target_cameras.c2w.to(dtype), (h, w),
                                     target_batch_size)
        if len(cameras) != 2:
            reject("render(images, input_cameras, target_cameras) takes two Cameras after the images")
        return super().render(inputs, cameras[0], cameras[1], target_batch_size=target_batch_size)


class InputViewCache:
    """The input stream's per-layer cross-attention keys and values for a batch of B scenes.

    ``add`` runs only the input stream on the new views and appends their keys/values after the cached ones
    (views keep their insertion order); rendering runs the full target stream against everything cached.
    The cache belongs to the model that built it: changing that model's weights invalidates it.
    """

    def __init__(self, model: EfficientLVSM, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        self.kv = KVCache(model.config.n_layer)
        self.tokens_per_view: list[int] = []
        self.fxfycxcy: list[Tensor] = []  # per added call, (B, V, 4)
        self.c2w: list[Tensor] = []  # per added call, (B, V, 4, 4)

    @property
    def n_views(self) -> int:
        return len(self.tokens_per_view)

    def __len__(self) -> int:
        return self.n_views

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """Keys (after the k RMSNorm) and values of ``layer``: each (B, heads, n_views * tokens, head_dim)."""
        return self.kv.keys(layer), self.kv.values(layer)

    def add(self, images: Tensor, cameras: Cameras) -> "InputViewCache":
        """Append views: images (B, 3, H, W) with Cameras (B,), or (B, V, 3, H, W) with Cameras (B, V)."""
        if isinstance(images, Tensor) and images.dim() == 4:
            images = images[:, None]
            if isinstance(cameras, Cameras) and cameras.c2w.dim() == 3:
                cameras = cameras[:, None]
        check_input_cameras(images, cameras, self.model.config.patch_size)
        dtype = images.dtype
        return self.add_tensors(images, cameras.fxfycxcy.to(dtype), cameras.c2w.to(dtype))

    def add_tensors(self, images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> "InputViewCache":
        """:meth:`add` with raw tensors: images (B, V, 3, H, W), fxfycxcy (B, V, 4), c2w (B, V, 4, 4)."""
        check_views(images, fxfycxcy, c2w, self.model.config.patch_size)
        if images.shape[0] != self.batch_size:
            reject(f"the cache holds {self.batch_size} scenes but {images.shape[0]} were given")
        tokens = self.model.tokenize_inputs(images, fxfycxcy, c2w)
        new = list(self.model.input_stream(tokens))  # all layers first: a failure leaves the cache as it was
        for layer, (k, v) in enumerate(new):
            self.kv.append(layer, k, v)
        self.tokens_per_view += [tokens.shape[2]] * tokens.shape[1]
        self.fxfycxcy.append(fxfycxcy)
        self.c2w.append(c2w)
        return self

    def reserve(self, n_views: int) -> "InputViewCache":
        """Pre-allocate room for ``n_views`` views of the last added size, so later adds never reallocate."""
        if self.tokens_per_view:
            self.kv.reserve(sum(self.tokens_per_view) + max(0, n_views - self.n_views) * self.tokens_per_view[-1])
        return self

    def remove(self, view: int) -> "InputViewCache":
        """A new cache without input view ``view`` (insertion index); the others keep their order."""
        if not -self.n_views <= view < self.n_views:
            raise ManyviewError(f"view index {view} is out of range for a cache of {self.n_views} views")
        view %= self.n_views
        starts = torch.tensor([0] + self.tokens_per_view).cumsum(0)
        keep = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in range(self.n_views) if i != view]
                         ) if self.n_views > 1 else torch.zeros(0, dtype=torch.long)
        out = InputViewCache(self.model, self.batch_size)
        if self.n_views > 1:
            out.kv = self.kv.select_tokens(keep.to(self.kv.keys(0).device))
        out.tokens_per_view = self.tokens_per_view[:view] + self.tokens_per_view[view + 1:]
        f, c = torch.cat(self.fxfycxcy, 1), torch.cat(self.c2w, 1)
        keep_views = [i for i in range(self.n_views) if i != view]
        if keep_views:
            out.fxfycxcy, out.c2w = [f[:, keep_views]], [c[:, keep_views]]
        return out

    def input_cameras(self) -> tuple[Tensor, Tensor]:
        """fxfycxcy (B, V, 4) and c2w (B, V, 4, 4) of the cached views, in insertion order."""
        if not self.c2w:
            reject("the input-view cache is empty")
        return torch.cat(self.fxfycxcy, 1), torch.cat(self.c2w, 1)


__all__ = ["EfficientLVSM", "InputViewCache"]
