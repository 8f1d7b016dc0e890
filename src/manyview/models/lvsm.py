"""LVSM (Large View Synthesis Model): posed photos -> new views, with no 3D representation in between.

Both variants share the tokenisation of posed views and the output head of :class:`LVSMBase`
(:mod:`manyview.models.lvsm_base`) and differ in the transformer between them:

- :class:`LVSMDecoderOnly`: per target view, full self-attention over [all input tokens, target tokens];
- :class:`LVSMEncoderDecoder`: an encoder compresses [learned latents, input tokens] into the latents once,
  a decoder renders each target from [target tokens, latents].

Efficient-LVSM (intra-view input stream + cross-attention, with a KV cache) is in
:mod:`manyview.models.efficient_lvsm`; the released checkpoint layouts in :mod:`manyview.models.lvsm_weights`;
building or loading a model of any variant in :mod:`manyview.models.lvsm_family`.

Module and parameter names follow the official code (Haian-Jin/LVSM), so released state dicts load as they are.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor, nn

from manyview.models.lvsm_base import LVSMBase
from manyview.models.lvsm_checks import chunks
from manyview.models.lvsm_config import CONFIGS, LVSMConfig
from manyview.nn.transformer import layer_norm


class LVSMDecoderOnly(LVSMBase):
    """Decoder-only LVSM: each target attends jointly with all input tokens (nothing shared across targets)."""

    variant = "decoder_only"

    def __init__(self, config: LVSMConfig = CONFIGS["lvsm-decoder-only"]):
        super().__init__(config)
        self.transformer_blocks = nn.ModuleList([self._block() for _ in range(config.n_layer)])
        self.transformer_input_layernorm = layer_norm(config.d, True)
        self._init_io()
        self._init_blocks(self.transformer_blocks)

    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        b, v_in, n, d = inputs.shape
        context = inputs.reshape(b, 1, v_in * n, d)
        out = []
        for sl in chunks(targets.shape[1], target_batch_size):
            t = targets[:, sl]
            c, n_t = t.shape[1], t.shape[2]
            # per target: [all input tokens, this target's tokens]; (B*c, Vin*N + Nt, d)
            x = torch.cat([context.expand(b, c, v_in * n, d), t], dim=2).reshape(b * c, v_in * n + n_t, d)
            x = self.transformer_input_layernorm(x)
            for block in self.transformer_blocks:
                x = block(x)
            out.append(x[:, v_in * n:].reshape(b, c, n_t, d))
        return torch.cat(out, dim=1)


class LVSMEncoderDecoder(LVSMBase):
    """Encoder-decoder LVSM: inputs are compressed once into ``n_latent_vectors`` latent tokens; every target
    is decoded from [its ray tokens, latents]."""

    variant = "encoder_decoder"

    def __init__(self, config: LVSMConfig = CONFIGS["lvsm-encoder-decoder"]):
        super().__init__(config)
        self.n_light_field_latent = nn.Parameter(torch.empty(config.n_latent_vectors, config.d))
        self.transformer_encoder = nn.ModuleList([self._block() for _ in range(config.encoder_n_layer)])
        self.transformer_decoder = nn.ModuleList([self._block() for _ in range(config.decoder_n_layer)])
        self.transformer_input_layernorm_decoder = layer_norm(config.d, True)
        nn.init.trunc_normal_(self.n_light_field_latent, std=0.02)
        self._init_io()
        self._init_blocks(self.transformer_encoder)
        self._init_blocks(self.transformer_decoder)

    def encode_latents(self, inputs: Tensor) -> Tensor:
        """Input tokens (B, Vin, N, d) -> scene latents (B, n_latent_vectors, d)."""
        b, v_in, n, d = inputs.shape
        latents = self.n_light_field_latent.expand(b, -1, -1)
        x = torch.cat([latents, inputs.reshape(b, v_in * n, d)], dim=1)
        for block in self.transformer_encoder:
            x = block(x)
        return x[:, : latents.shape[1]]

    def decode_latents(self, latents: Tensor, targets: Tensor, target_batch_size: int | None = None) -> Tensor:
        """Scene latents (B, L, d) and target ray tokens (B, Vt, Nt, d) -> target tokens (B, Vt, Nt, d)."""
        b, n_lat, d = latents.shape
        out = []
        for sl in chunks(targets.shape[1], target_batch_size):
            t = targets[:, sl]
            c, n_t = t.shape[1], t.shape[2]
            x = torch.cat([t.reshape(b * c, n_t, d), repeat(latents, "b l d -> (b c) l d", c=c)], dim=1)
            x = self.transformer_input_layernorm_decoder(x)
            for block in self.transformer_decoder:
                x = block(x)
            out.append(x[:, :n_t].reshape(b, c, n_t, d))
        return torch.cat(out, dim=1)

    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        return self.decode_latents(self.encode_latents(inputs), targets, target_batch_size)


__all__ = ["LVSMDecoderOnly", "LVSMEncoderDecoder"]
