"""Checkpoints of the LVSM family: the released layouts in, Hugging Face-style folders in and out.

Accepted inputs
- released / training containers (``torch.save`` dict with ``"model"``), read with ``torch.load(weights_only=True)``
  only; a bare state dict in a ``.pt`` file works too;
- ``.safetensors`` files with the official key names;
- folders with ``config.json`` + ``model.safetensors`` (written by :func:`save_pretrained`).

Keys are cleaned as the official loaders do (a leading ``_orig_mod.`` from ``torch.compile`` is stripped), and
training-only entries are dropped: ``loss_computer.*`` (VGG perceptual / LPIPS loss networks) and, for
Efficient-LVSM trained with REPA, ``repa_encoder.*`` / ``repa_projector.*``. Unlike the official ``strict=False``
loaders, any other missing or unexpected key is an error that names the keys.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open, atomic_path
from manyview.models.lvsm import VARIANT_NAMES, LVSMBase, LVSMConfig, Variant, build_model, get_config

TRAINING_ONLY_PREFIXES = ("loss_computer.", "repa_encoder.", "repa_projector.")
COMPILE_PREFIX = "_orig_mod."
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

# the key that only each variant has, and the official class each YAML names
_SIGNATURES: dict[Variant, str] = {"efficient": "self_cross_blocks.", "encoder_decoder": "transformer_encoder.",
                                   "decoder_only": "transformer_blocks."}
_CLASS_NAMES: dict[str, Variant] = {
    "LVSM_scene_decoder_only.Images2LatentScene": "decoder_only",
    "LVSM_scene_encoder_decoder.Images2LatentScene": "encoder_decoder",
    "efficient_lvsm.Images2LatentScene": "efficient",
}


# --------------------------------------------------------------------------------------------- reading
def clean_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip one leading ``_orig_mod.`` per key and drop training-only entries."""
    out = {}
    for key, value in state_dict.items():
        key = key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key
        if not key.startswith(TRAINING_ONLY_PREFIXES):
            out[key] = value
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The renderer weights in a checkpoint file (container ``.pt`` or ``.safetensors``), keys cleaned."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("checkpoint file not found" if not path.exists() else "expected a checkpoint file",
                            path)
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated / corrupt headers
            raise ManyviewError(f"not a readable safetensors file ({e})", path) from e
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise ManyviewError(f"not a weights-only PyTorch checkpoint (refusing to unpickle arbitrary "
                                f"objects): {str(e).splitlines()[0] if str(e) else type(e).__name__}", path) from e
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw = raw["model"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ManyviewError("holds no state dict of tensors (expected a dict with 'model', or a state dict)", path)
    return clean_state_dict(raw)


def detect_variant(keys) -> Variant | None:
    """Which LVSM-family model a set of state-dict keys belongs to (None if none)."""
    keys = list(keys)
    for variant, prefix in _SIGNATURES.items():
        if any(k.startswith(prefix) for k in keys):
            return variant
    return None


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


def _key_list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def load_weights(model: LVSMBase, state_dict: dict[str, Tensor], path=None) -> LVSMBase:
    """Load a cleaned state dict strictly: the variant must match, with no missing, unexpected or mis-shaped keys."""
    found = detect_variant(state_dict)
    if found is not None and found != model.variant:
        raise ManyviewError(f"this is an {VARIANT_NAMES[found]} checkpoint (keys {_SIGNATURES[found]}*) but the model "
                            f"is {VARIANT_NAMES[model.variant]}; build the model with variant={found!r}", path)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state_dict), set(state_dict) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes[:8])}")
    if problems:
        raise ManyviewError(f"checkpoint does not fit {model.config.describe()}: "
                            + " | ".join(problems), path)
    model.load_state_dict(state_dict, strict=True)
    return model


# --------------------------------------------------------------------------------------------- configs
def config_from_yaml(path: str | os.PathLike) -> LVSMConfig:
    """The architecture in an official LVSM / Efficient-LVSM YAML config (read with ``yaml.safe_load``)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ManyviewError("config file not found", path) from e
    except yaml.YAMLError as e:
        raise ManyviewError(f"not valid YAML: {e}", path) from e
    return config_from_official(data, path)


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


def _resolve_config(config, path) -> LVSMConfig | None:
    if config is None or isinstance(config, LVSMConfig):
        return config
    if isinstance(config, (str, os.PathLike)) and Path(config).suffix in (".yaml", ".yml"):
        return config_from_yaml(config)
    if isinstance(config, str):
        return get_config(config)
    raise ManyviewError(f"config must be an LVSMConfig, a configuration name or a YAML path, got {config!r}", path)


# --------------------------------------------------------------------------------------------- loading
def load_lvsm(path: str | os.PathLike, config: LVSMConfig | str | os.PathLike | None = None,
              device: str | torch.device = "cpu") -> LVSMBase:
    """A model in eval mode from a checkpoint file or a Hugging Face-style folder.

    ``config``: an :class:`LVSMConfig`, a name from ``CONFIGS``, or an official YAML; without one, a folder's
    ``config.json`` is used, or the architecture is inferred from the tensor shapes.
    """
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path, device=device) if config is None else _load(
            path / WEIGHTS_NAME, _resolve_config(config, path), device)
    return _load(path, _resolve_config(config, path), device)


def _load(weights: Path, config: LVSMConfig | None, device) -> LVSMBase:
    state_dict = read_state_dict(weights)
    if config is None:
        config = infer_config(state_dict, weights)
    found = detect_variant(state_dict)
    if found is not None and found != config.variant:
        raise ManyviewError(f"this is an {VARIANT_NAMES[found]} checkpoint but the config asks for "
                            f"{VARIANT_NAMES[config.variant]}", weights)
    with torch.device("meta"):
        model = build_model(config)
    model.to_empty(device="cpu")
    load_weights(model, state_dict, weights)
    return model.to(device).eval()


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LVSMBase:
    """Load a folder written by :func:`save_pretrained` (config.json + model.safetensors)."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise ManyviewError(f"no {CONFIG_NAME} in the model folder", directory)
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ManyviewError(f"invalid JSON: {e}", cfg_path) from e
    if not isinstance(data, dict):
        raise ManyviewError("config must be a JSON object", cfg_path)
    data = {k: v for k, v in data.items() if k != "architecture"}
    return _load(directory / WEIGHTS_NAME, LVSMConfig.from_dict(data, cfg_path), device)


# --------------------------------------------------------------------------------------------- writing
def save_pretrained(model: LVSMBase, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors (official key names) into ``directory``; each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": model.variant})
    with atomic_open(directory / CONFIG_NAME, "w") as f:
        json.dump({"architecture": VARIANT_NAMES[model.variant], **model.config.to_dict()}, f, indent=2)
        f.write("\n")
    return directory


def save_official_checkpoint(model: nn.Module, path: str | os.PathLike, compiled_prefix: bool = False) -> Path:
    """Write the released container layout ``{"model": state_dict}`` (optionally with ``_orig_mod.`` keys, as a
    ``torch.compile``-wrapped official training run saves them), loadable by the official ``load_ckpt``."""
    prefix = COMPILE_PREFIX if compiled_prefix else ""
    state = {prefix + k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)
    return Path(path)


__all__ = ["read_state_dict", "clean_state_dict", "detect_variant", "infer_config", "load_weights",
           "config_from_yaml", "config_from_official", "load_lvsm", "load_pretrained", "save_pretrained",
           "save_official_checkpoint"]
