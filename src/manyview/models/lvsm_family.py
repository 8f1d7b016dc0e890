"""The LVSM family as one entry point: the model class of a variant, a fresh model, or one loaded from weights.

The variants live in their own modules (:mod:`manyview.models.lvsm`, :mod:`manyview.models.efficient_lvsm`), each
built on :mod:`manyview.models.lvsm_base`; only this module knows them all, so none imports another.
"""

from __future__ import annotations

import os

import torch

from manyview.hub import open_checkpoint
from manyview.models.efficient_lvsm import EfficientLVSM
from manyview.models.lvsm import LVSMDecoderOnly, LVSMEncoderDecoder
from manyview.models.lvsm_base import LVSMBase
from manyview.models.lvsm_config import LVSMConfig, Variant, get_config

MODEL_CLASSES: dict[Variant, type[LVSMBase]] = {"decoder_only": LVSMDecoderOnly,
                                                "encoder_decoder": LVSMEncoderDecoder, "efficient": EfficientLVSM}


def build_model(config: LVSMConfig | str) -> LVSMBase:
    """A freshly initialised model of the variant the config (or configuration name) names."""
    config = get_config(config) if isinstance(config, str) else config
    return MODEL_CLASSES[config.variant](config)


def load_lvsm(name_or_path: str | os.PathLike, config: LVSMConfig | str | os.PathLike | None = None,
              device: str | torch.device = "cpu", revision: str | None = None) -> LVSMBase:
    """A model of whichever variant the checkpoint holds, in eval mode, from a model folder (config.json +
    model.safetensors), a released ``.pt`` / ``.safetensors`` checkpoint, or a Hugging Face repo id.

    ``config``: an :class:`LVSMConfig`, a name from ``CONFIGS``, or an official YAML; without one, the
    config.json beside the weights is used, or the architecture is read off the tensor shapes.
    """
    checkpoint = open_checkpoint(name_or_path, revision)
    config = LVSMBase.checkpoint_config(checkpoint, config)
    return MODEL_CLASSES[config.variant].from_checkpoint(checkpoint, config).to(device)


__all__ = ["MODEL_CLASSES", "build_model", "load_lvsm"]
