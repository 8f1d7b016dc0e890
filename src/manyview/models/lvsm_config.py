"""Architecture of the LVSM family: :class:`LVSMConfig`, the named configurations, and the variants' names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from manyview.errors import ManyviewError

Variant = Literal["decoder_only", "encoder_decoder", "efficient"]
VARIANT_NAMES = {"decoder_only": "LVSM decoder-only", "encoder_decoder": "LVSM encoder-decoder",
                 "efficient": "Efficient-LVSM"}


@dataclass(frozen=True)
class LVSMConfig:
    """Architecture of one LVSM-family model (the fields the official YAML's ``model`` section sets).

    ``n_layer`` is the depth of the decoder-only transformer and of each Efficient-LVSM stream;
    ``encoder_n_layer`` / ``decoder_n_layer`` / ``n_latent_vectors`` only apply to the encoder-decoder.
    ``image_size`` is the training resolution (renders work at any multiple of ``patch_size``);
    ``scene_scale_factor`` is what :func:`normalize_poses` must be called with for this model.
    """

    variant: Variant = "decoder_only"
    d: int = 768
    d_head: int = 64
    n_layer: int = 24
    encoder_n_layer: int = 12
    decoder_n_layer: int = 12
    n_latent_vectors: int = 3072
    patch_size: int = 8
    image_size: int = 256
    use_qk_norm: bool = True
    special_init: bool = True
    depth_init: bool = True
    scene_scale_factor: float = 1.35

    def __post_init__(self):
        if self.variant not in VARIANT_NAMES:
            raise ManyviewError(f"unknown LVSM variant {self.variant!r}; expected one of {sorted(VARIANT_NAMES)}")
        if self.d % self.d_head:
            raise ManyviewError(f"LVSM width d={self.d} is not a multiple of d_head={self.d_head}")
        if min(self.d, self.d_head, self.patch_size, self.n_layer, self.encoder_n_layer, self.decoder_n_layer,
               self.n_latent_vectors) < 1:
            raise ManyviewError(f"LVSM config has a non-positive size: {self}")

    def describe(self) -> str:
        """One line naming the variant and the sizes that matter for it."""
        depth = (f"{self.encoder_n_layer}+{self.decoder_n_layer} layers, {self.n_latent_vectors} latents"
                 if self.variant == "encoder_decoder" else f"{self.n_layer} layers")
        return f"{VARIANT_NAMES[self.variant]} (d={self.d}, d_head={self.d_head}, {depth}, patch {self.patch_size})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path=None) -> "LVSMConfig":
        """The fields as :meth:`to_dict` writes them; an ``architecture`` entry (the human-readable label that
        earlier config.json files carry beside the fields) is ignored."""
        data = {k: v for k, v in data.items() if k != "architecture"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ManyviewError(f"unknown LVSM config fields {unknown}", path)
        try:
            return cls(**data)
        except ManyviewError as e:  # a bad value: say which file holds it
            raise ManyviewError(e.message, path) from None
        except TypeError as e:
            raise ManyviewError(f"bad LVSM config value ({e})", path) from None


CONFIGS: dict[str, LVSMConfig] = {
    # published sizes (HF coast01/LVSM and Ayakaee/efficient-lvsm)
    "lvsm-decoder-only": LVSMConfig("decoder_only", n_layer=24),
    "lvsm-decoder-only-512": LVSMConfig("decoder_only", n_layer=24, image_size=512),
    "lvsm-encoder-decoder": LVSMConfig("encoder_decoder", encoder_n_layer=12, decoder_n_layer=12),
    "lvsm-encoder-decoder-512": LVSMConfig("encoder_decoder", encoder_n_layer=12, decoder_n_layer=12,
                                           image_size=512),
    "efficient-lvsm": LVSMConfig("efficient", n_layer=12),
    "efficient-lvsm-512": LVSMConfig("efficient", n_layer=12, image_size=512),
    # small enough to bundle (< 25 MB of float32 weights) and to train on one GPU
    "lvsm-small": LVSMConfig("decoder_only", d=256, d_head=32, n_layer=6),
    "lvsm-encoder-decoder-small": LVSMConfig("encoder_decoder", d=256, d_head=32, encoder_n_layer=3,
                                             decoder_n_layer=3, n_latent_vectors=512),
    "efficient-lvsm-small": LVSMConfig("efficient", d=256, d_head=32, n_layer=3),
    # CPU tests (the sizes of the parity fixtures)
    "lvsm-tiny": LVSMConfig("decoder_only", d=64, d_head=16, n_layer=4, image_size=32),
    "lvsm-encoder-decoder-tiny": LVSMConfig("encoder_decoder", d=64, d_head=16, encoder_n_layer=2,
                                            decoder_n_layer=2, n_latent_vectors=32, image_size=32),
    "efficient-lvsm-tiny": LVSMConfig("efficient", d=64, d_head=16, n_layer=3, image_size=32),
}


def get_config(name: str) -> LVSMConfig:
    if name not in CONFIGS:
        raise ManyviewError(f"unknown LVSM configuration {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


__all__ = ["CONFIGS", "LVSMConfig", "VARIANT_NAMES", "Variant", "get_config"]
