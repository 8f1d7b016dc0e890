"""The released LVSM-family checkpoint layouts, as pure mappings on state dicts and config dicts.

Files are read by :mod:`manyview.hub` (safetensors, or ``torch.load(weights_only=True)`` with the ``{"model": ...}``
container unwrapped); this module only says what the tensors in them mean:

- keys are cleaned as the official loaders do (a leading ``_orig_mod.`` from ``torch.compile`` is stripped), and
  training-only entries are dropped: ``loss_computer.*`` (VGG perceptual / LPIPS loss networks) and, for
  Efficient-LVSM trained with REPA, ``repa_encoder.*`` / ``repa_projector.*``; unlike the official
  ``strict=False`` loaders, any other missing or unexpected key is an error that names the keys;
- which variant a state dict belongs to, and its architecture read off the tensor shapes (released checkpoints
  come without a config);
- the ``model`` section of an official YAML config as an :class:`LVSMConfig`.
"""

from __future__ import annotations

import os
import re

from torch import Tensor

from manyview.errors import ManyviewError
from manyview.hub import read_config
from manyview.models.lvsm_config import VARIANT_NAMES, LVSMConfig, Variant

TRAINING_ONLY_PREFIXES = ("loss_computer.", "repa_encoder.", "repa_projector.")
COMPILE_PREFIX = "_orig_mod."

# the key that only each variant has, and the official class each YAML names
_SIGNATURES: dict[Variant, str] = {"efficient": "self_cross_blocks.", "encoder_decoder": "transformer_encoder.",
                                   "decoder_only": "transformer_blocks."}
_CLASS_NAMES: dict[str, Variant] = {
    "LVSM_scene_decoder_only.Images2LatentScene": "decoder_only",
    "LVSM_scene_encoder_decoder.Images2LatentScene": "encoder_decoder",
    "efficient_lvsm.Images2LatentScene": "efficient",
}


# --------------------------------------------------------------------------------------------- state dicts
def clean_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip one leading ``_orig_mod.`` per key and drop training-only entries."""
    out = {}
    for key, value in state_dict.items():
        key = key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key
        if not key.startswith(TRAINING_ONLY_PREFIXES):
            out[key] = value
    return out


def detect_variant(keys) -> Variant | None:
    """Which LVSM-family model a set of state-dict keys belongs to (None if none)."""
    keys = list(keys)
    for variant, prefix in _SIGNATURES.items():
        if any(k.startswith(prefix) for k in keys):
            return variant
    return None


def check_variant(state_dict, variant: Variant, path=None, against: str = "model") -> None:
    """Raise a ManyviewError naming both variants when ``state_dict`` is of another variant than ``variant``."""
    found = detect_variant(state_dict)
    if found is not None and found != variant:
        raise ManyviewError(f"this is an {VARIANT_NAMES[found]} checkpoint (keys {_SIGNATURES[found]}*) but the "
                            f"{against} is {VARIANT_NAMES[variant]}; use a config of variant {found!r}, or none "
                            "(load_lvsm reads the architecture off the checkpoint)", path)


def _layer_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state_dict: dict[str, Tensor], path=None) -> LVSMConfig:
    """Architecture from tensor shapes (for checkpoints that come without a config)."""
    variant = detect_variant(state_dict)
    if variant is None:
        raise ManyviewError("not an LVSM, LVSM encoder-decoder or Efficient-LVSM checkpoint (no transformer_blocks.*, "
                            "transformer_encoder.* or self_cross_blocks.* keys)", path)
    tokenizer = "rgbp_tokenizer.1.weight" if variant == "efficient" else "image_tokenizer.1.weight"
    if tokenizer not in state_dict:
        raise ManyviewError(f"{VARIANT_NAMES[variant]} checkpoint without {tokenizer}", path)
    d, in_features = state_dict[tokenizer].shape
    patch = round((in_features / 9) ** 0.5)
    if 9 * patch * patch != in_features:
        raise ManyviewError(f"{tokenizer} has {in_features} input features, not 9 x patch^2", path)
    q_norm = next((v for k, v in state_dict.items() if k.endswith("q_norm.weight")), None)
    if q_norm is None:
        raise ManyviewError("checkpoint has no QK-norm weights, so the head size cannot be inferred; pass a config",
                            path)
    fields = dict(variant=variant, d=int(d), d_head=int(q_norm.shape[0]), patch_size=patch)
    if variant == "decoder_only":
        fields["n_layer"] = _layer_count(state_dict, "transformer_blocks.")
    elif variant == "efficient":
        fields["n_layer"] = _layer_count(state_dict, "self_cross_blocks.")
    else:
        fields["encoder_n_layer"] = _layer_count(state_dict, "transformer_encoder.")
        fields["decoder_n_layer"] = _layer_count(state_dict, "transformer_decoder.")
        if "n_light_field_latent" in state_dict:
            fields["n_latent_vectors"] = int(state_dict["n_light_field_latent"].shape[0])
    return LVSMConfig(**fields)


# --------------------------------------------------------------------------------------------- configs
def config_from_yaml(path: str | os.PathLike) -> LVSMConfig:
    """The architecture in an official LVSM / Efficient-LVSM YAML config (read by :func:`manyview.hub.read_config`)."""
    return config_from_official(read_config(path), path)


def config_from_official(data: dict, path=None) -> LVSMConfig:
    """Map the ``model`` section (and ``training.scene_scale_factor``) of an official config dict."""
    try:
        model = data["model"]
        class_name = str(model["class_name"])
        image_tok, target_tok, tr = model["image_tokenizer"], model["target_pose_tokenizer"], model["transformer"]
    except (KeyError, TypeError) as e:
        raise ManyviewError(f"not an LVSM config: missing model section entry {e}", path) from e
    variant = next((v for name, v in _CLASS_NAMES.items() if class_name.endswith(name)), None)
    if variant is None:
        raise ManyviewError(f"unknown model.class_name {class_name!r}; expected one of {sorted(_CLASS_NAMES)}", path)
    if image_tok.get("in_channels", 9) != 9 or target_tok.get("in_channels", 6) != 6:
        raise ManyviewError("only the released tokenisation (9 input channels rgb + Plücker, 6 target channels) is "
                            f"supported, got {image_tok.get('in_channels')} and {target_tok.get('in_channels')}", path)
    if image_tok["patch_size"] != target_tok["patch_size"]:
        raise ManyviewError("input and target patch sizes differ", path)
    fields = dict(variant=variant, d=tr["d"], d_head=tr["d_head"], patch_size=image_tok["patch_size"],
                  image_size=image_tok.get("image_size", 256), use_qk_norm=bool(tr.get("use_qk_norm", False)),
                  special_init=bool(tr.get("special_init", False)), depth_init=bool(tr.get("depth_init", False)),
                  scene_scale_factor=float((data.get("training") or {}).get("scene_scale_factor", 1.35)))
    try:
        if variant == "encoder_decoder":
            fields.update(encoder_n_layer=tr["encoder_n_layer"], decoder_n_layer=tr["decoder_n_layer"],
                          n_latent_vectors=tr["n_latent_vectors"])
        else:
            fields["n_layer"] = tr["n_layer"]
    except KeyError as e:
        raise ManyviewError(f"model.transformer lacks {e}", path) from e
    return LVSMConfig(**fields)


__all__ = ["check_variant", "clean_state_dict", "config_from_official", "config_from_yaml", "detect_variant",
           "infer_config"]
