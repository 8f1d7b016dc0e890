"""Checkpoints in the Hugging Face layout: ``config.json`` + ``model.safetensors``, shared by every model.

A model class opts in with :class:`HubMixin`: it needs a ``config`` attribute whose class has
``from_dict(d, path=None)`` and ``to_dict()``, a constructor ``cls(config)``, and optionally
``_remap_state_dict`` for legacy key layouts.

- Tied tensors (one module reachable under two names, e.g. DPT's ``scratch.layer_rn.{i}`` and
  ``scratch.layer{i+1}_rn``) are stored once; the safetensors metadata maps each dropped name to the stored one,
  as ``safetensors.torch.save_model`` does, so the files load with either tool.
- Loading is strict: missing or unexpected keys and shape mismatches raise :class:`ManyviewError` naming them.
- ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` files are read with ``torch.load(weights_only=True)`` only; a pickle that
  carries anything but tensors and plain containers (i.e. could run code) is refused. Training wrappers' state dicts
  (Lightning ``{"state_dict": ...}``, DUSt3R ``{"model": ...}``) and their key prefixes (``model.``, ``net.``,
  ``module.``, ``_orig_mod.``) are unwrapped.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open, atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
WRAPPER_PREFIXES = ("model.", "net.", "module.", "_orig_mod.")
_MAX_LISTED = 12


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


# ----------------------------------------------------------------------------------------------------------- tied
def tied_groups(state_dict: Mapping[str, Tensor]) -> list[list[str]]:
    """Groups (size > 1) of names that refer to the very same tensor memory, each sorted by name."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state_dict.items():
        if t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def deduplicate(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Keep one name per tied group (the first in sorted order); return (tensors, {dropped: kept})."""
    tensors = dict(state_dict)
    aliases: dict[str, str] = {}
    for group in tied_groups(state_dict):
        kept, *dropped = group
        for name in dropped:
            aliases[name] = kept
            del tensors[name]
    return tensors, aliases


# ------------------------------------------------------------------------------------------------------- reading
def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ManyviewError("config file not found", path) from None
    except json.JSONDecodeError as e:
        raise ManyviewError(f"not valid JSON ({e})", path) from None
    if not isinstance(data, dict):
        raise ManyviewError("config must be a JSON object", path)
    return data


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the state dict inside a training checkpoint container (Lightning, DUSt3R, plain)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state_dict")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ManyviewError("no state dict (a mapping of names to tensors) found in the checkpoint", path)
    return tensors


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on CPU, {alias: stored name}) from a .safetensors file or a weights-only pickle."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ManyviewError(f"cannot read safetensors file ({e})", path) from None
        aliases = {k: v for k, v in metadata.items() if v in tensors and k not in tensors}
        return tensors, aliases
    if path.suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ManyviewError(
                "refusing to load: the pickle holds objects other than tensors and plain containers, which could "
                f"run code when unpickled (torch.load weights_only=True said: {first}). Convert it to safetensors "
                "in an environment you trust", path) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise ManyviewError(f"cannot read checkpoint ({e})", path) from None
        return _unwrap(obj, path), {}
    raise ManyviewError(f"unknown weights format {path.suffix!r}; expected .safetensors or one of "
                        f"{', '.join(PICKLE_SUFFIXES)}", path)


# ------------------------------------------------------------------------------------------------------- loading
def _strip_wrapper_prefix(tensors: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Remove a training wrapper's key prefix (repeatedly, e.g. ``model._orig_mod.``) when that makes keys match."""
    while tensors and not (tensors.keys() & expected):
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                break
        else:
            break
    return tensors


def load_weights(model: nn.Module, tensors: Mapping[str, Tensor], aliases: Mapping[str, str] | None = None,
                 path: str | os.PathLike | None = None, strict: bool = True) -> None:
    """Copy ``tensors`` into ``model``; tied names in the model may be satisfied by any one of their names.

    strict: any missing key, unexpected key or shape mismatch raises ManyviewError (naming keys and shapes).
    """
    expected = model.state_dict()
    tensors = _strip_wrapper_prefix(dict(tensors), set(expected))
    aliases = dict(aliases or {})
    for group in tied_groups(expected):
        present = [n for n in group if n in tensors]
        for name in group:
            if name not in tensors and present:
                aliases.setdefault(name, present[0])

    full: dict[str, Tensor] = {}
    missing = []
    for name in expected:
        source = name if name in tensors else aliases.get(name)
        if source is None or source not in tensors:
            missing.append(name)
        else:
            full[name] = tensors[source]
    used = set(full) | {aliases[n] for n in full if n in aliases}
    unexpected = [k for k in tensors if k not in used]
    mismatched = [f"{k}: checkpoint {tuple(full[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in full and full[k].shape != v.shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {_listing(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise ManyviewError("checkpoint does not fit the model: " + "; ".join(problems), path)
    model.load_state_dict(full, strict=strict)


# ------------------------------------------------------------------------------------------------------- writing
def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state dict as safetensors (tied tensors once, aliases in the metadata), atomically."""
    from safetensors.torch import save_file

    tensors, aliases = deduplicate(model.state_dict())
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=aliases or None)
    return path


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local file or folder as is; otherwise a Hugging Face repo id, downloaded (config + safetensors) to the cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or name.startswith((".", "/", "~")):
        raise ManyviewError("no such file or folder, and not a Hugging Face repo id (owner/name)", name)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ManyviewError("not a local path; downloading from the Hugging Face Hub needs huggingface_hub "
                            "(pip install 'manyview[hub]')", name) from None
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=[CONFIG_NAME, "*.safetensors"]))
    except Exception as e:  # offline, unknown repo, gated repo, network errors: one clear line for the user
        raise ManyviewError(f"not a local path, and could not download from the Hugging Face Hub ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}); "
                            "pass a local folder with config.json and model.safetensors instead", name) from None


def _weights_in(folder: Path) -> Path:
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    candidates = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    if not candidates:
        candidates = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ManyviewError(f"expected {WEIGHTS_NAME} (or exactly one weights file); found {found}", folder)
    return candidates[0]


class HubMixin:
    """``from_pretrained`` / ``save_pretrained`` for a model built as ``cls(config)``."""

    config_class: type

    @classmethod
    def _remap_state_dict(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook for legacy key layouts; identity by default."""
        return tensors

    @classmethod
    def _resolve_config(cls, config: Any) -> Any:
        """A config object as is; a dict through ``config_class.from_dict``; subclasses add preset names."""
        if isinstance(config, cls.config_class):
            return config
        if isinstance(config, Mapping):
            return cls.config_class.from_dict(dict(config))
        raise ManyviewError(f"cannot build a {cls.__name__} config from {type(config).__name__}")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, config: Any = None, revision: str | None = None,
                        strict: bool = True):
        """Load from a folder (config.json + weights), a weights file (config.json beside it or ``config``), or
        a Hugging Face repo id. Returns the model in eval mode on CPU."""
        path = resolve(name_or_path, revision)
        weights = _weights_in(path) if path.is_dir() else path
        if config is None:
            config_path = weights.parent / CONFIG_NAME
            if not config_path.is_file():
                raise ManyviewError(f"no {CONFIG_NAME} beside the weights; pass config= explicitly", weights)
            config = cls.config_class.from_dict(read_config(config_path), path=config_path)
        else:
            config = cls._resolve_config(config)
        model = cls(config)
        tensors, aliases = read_state_dict(weights)
        load_weights(model, cls._remap_state_dict(tensors), aliases, weights, strict=strict)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_open(directory / CONFIG_NAME, "w") as f:
            json.dump(self.config.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        save_weights(self, directory / WEIGHTS_NAME)
        return directory
