"""Model weights in and out: the one loader every network uses, and the Hugging Face folder layout.

Every model (Fast3R, the pairwise baseline, LVSM, Efficient-LVSM) and every loss or metric network (VGG-19, LPIPS)
gets its weights through this module; nothing else reads a weights file.

- Reading: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` through
  ``torch.load(weights_only=True)`` (:mod:`manyview.io.tensor_files`): a pickle that carries anything but tensors
  and plain containers (i.e. could run code) is refused, naming the file. Training containers (Lightning
  ``{"state_dict": ...}``, DUSt3R / LVSM ``{"model": ...}``) and their key prefixes (``model.``, ``net.``,
  ``module.``, ``_orig_mod.``) are unwrapped.
- Loading is strict: missing or unexpected keys and shape mismatches raise :class:`ManyviewError` naming them.
- Tied tensors (one module reachable under two names, e.g. DPT's ``scratch.layer_rn.{i}`` and
  ``scratch.layer{i+1}_rn``) are stored once; the safetensors metadata maps each dropped name to the stored one,
  as ``safetensors.torch.save_model`` does, so the files load with either tool.
- Where: :func:`open_checkpoint` takes a model folder (``config.json`` + ``model.safetensors``), a weights file
  (with ``config.json`` beside it, or none), or a Hugging Face repo id.

A model class opts in with :class:`HubMixin`: it needs a ``config`` attribute whose class has
``from_dict(d, path=None)`` and ``to_dict()``, a constructor ``cls(config)``, and optionally the hooks
``_remap_state_dict`` (legacy key layouts), ``_resolve_config`` (preset names) and ``_config_without_file``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open, atomic_path
from manyview.io.tensor_files import read_pickle, read_safetensors, sniff_format

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
CONTAINER_KEYS = ("state_dict", "model", "module", "model_state_dict")
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
    """A config file as a dict: JSON, or YAML (``.yaml`` / ``.yml``, read with ``yaml.safe_load``)."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("config file not found" if not path.exists() else "config path is not a file", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManyviewError(f"cannot read config file ({e})", path) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ManyviewError(f"not valid YAML: {' '.join(str(e).split())}", path) from None
        what = "a YAML mapping"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManyviewError(f"not valid JSON ({e})", path) from None
        what = "a JSON object"
    if not isinstance(data, dict):
        raise ManyviewError(f"config must be {what}", path)
    return data


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the state dict inside a training checkpoint container (Lightning, DUSt3R, LVSM, plain)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ManyviewError("no state dict (a mapping of names to tensors) found in the checkpoint", path)
    return tensors


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on CPU, {alias: stored name}) from a .safetensors file or a weights-only pickle.

    The format is told by the file's first bytes (a misnamed file still loads, or is refused, correctly), and by
    its suffix when the bytes say nothing."""
    path = Path(path)
    if not path.exists():
        raise ManyviewError("weights file not found", path)
    if path.is_dir():
        raise ManyviewError("expected a weights file, found a folder", path)
    suffix = path.suffix.lower()
    fmt = sniff_format(path) or ("safetensors" if suffix == ".safetensors" else
                                 "pickle" if suffix in WEIGHTS_SUFFIXES else None)
    if fmt == "safetensors":
        tensors, metadata = read_safetensors(path)
        aliases = {k: v for k, v in metadata.items() if v in tensors and k not in tensors}
        return tensors, aliases
    if fmt == "pickle":
        return _unwrap(read_pickle(path), path), {}
    raise ManyviewError(f"unknown weights format {path.suffix!r}: expected a model folder ({CONFIG_NAME} + "
                        f"{WEIGHTS_NAME}), a .safetensors file or a {' / '.join(WEIGHTS_SUFFIXES[1:])} checkpoint",
                        path)


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
                 path: str | os.PathLike | None = None, strict: bool = True, assign: bool = False,
                 what: str = "the model") -> None:
    """Copy ``tensors`` into ``model``; tied names in the model may be satisfied by any one of their names.

    strict: any missing key, unexpected key or shape mismatch raises ManyviewError naming ``path``, the keys and
    shapes, and the network (``what``). assign: replace the model's tensors instead of copying into them (for a
    model built on the meta device).
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
        raise ManyviewError(f"checkpoint does not fit {what}: " + "; ".join(problems), path)
    model.load_state_dict(full, strict=strict, assign=assign)


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


# ------------------------------------------------------------------------------------------------------- where
def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local file or folder as is; otherwise a Hugging Face repo id, downloaded (config + safetensors) to the
    cache."""
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


def find_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a model folder: ``model.safetensors``, else its one .safetensors, else its one pickle."""
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    files = sorted(p for p in folder.iterdir() if p.is_file())
    candidates = [p for p in files if p.suffix.lower() == ".safetensors"]
    if not candidates:
        candidates = [p for p in files if p.suffix.lower() in WEIGHTS_SUFFIXES]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ManyviewError(f"expected {WEIGHTS_NAME} or exactly one weights file; found "
                            f"{', '.join(p.name for p in candidates)}", folder)
    if not (folder / CONFIG_NAME).is_file():
        raise ManyviewError(f"not a model folder: no {CONFIG_NAME} and no {WEIGHTS_NAME} (nor any other "
                            f"{' / '.join(WEIGHTS_SUFFIXES)} file) in it", folder)
    raise ManyviewError(f"no {WEIGHTS_NAME} (nor any other {' / '.join(WEIGHTS_SUFFIXES)} file) beside "
                        f"{CONFIG_NAME} in this folder", folder)


@dataclass(frozen=True)
class Checkpoint:
    """Weights read from disk, and the ``config.json`` beside them when there is one.

    ``source`` is what was asked for (a folder, or the weights file itself); ``weights`` the file read."""

    source: Path
    weights: Path
    tensors: dict[str, Tensor]
    aliases: dict[str, str]
    config: dict | None
    config_path: Path | None

    @property
    def is_folder(self) -> bool:
        return self.source.is_dir()


def open_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    """Read a model folder, a weights file or a Hugging Face repo id.

    The weights are read before the config is looked for, so a file that is not a usable checkpoint (a pickle
    that carries code, a damaged or foreign file) is named as such, whatever else is missing."""
    source = resolve(name_or_path, revision)
    weights = find_weights(source) if source.is_dir() else source
    tensors, aliases = read_state_dict(weights)
    config_path = weights.parent / CONFIG_NAME
    if not config_path.is_file():
        return Checkpoint(source, weights, tensors, aliases, None, None)
    return Checkpoint(source, weights, tensors, aliases, read_config(config_path), config_path)


# ------------------------------------------------------------------------------------------------------- models
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
    def _config_without_file(cls, checkpoint: Checkpoint) -> Any:
        """The config when none was passed and no config.json is beside the weights: an error by default."""
        where = "in this folder" if checkpoint.is_folder else "beside the weights"
        raise ManyviewError(f"no {CONFIG_NAME} {where}; pass config= explicitly", checkpoint.source)

    @classmethod
    def checkpoint_config(cls, checkpoint: Checkpoint, config: Any = None) -> Any:
        """``config`` if given, else the checkpoint's config.json, else :meth:`_config_without_file`."""
        if config is not None:
            return cls._resolve_config(config)
        if checkpoint.config is not None:
            return cls.config_class.from_dict(dict(checkpoint.config), path=checkpoint.config_path)
        return cls._config_without_file(checkpoint)

    @classmethod
    def _build(cls, config: Any):
        """A model for ``config`` whose weights are about to be loaded."""
        return cls(config)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, config: Any = None, strict: bool = True):
        """A model built from ``checkpoint`` (see :func:`open_checkpoint`), in eval mode on CPU."""
        model = cls._build(cls.checkpoint_config(checkpoint, config))
        model.load_tensors(checkpoint.tensors, checkpoint.aliases, checkpoint.weights, strict=strict)
        return model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, config: Any = None, revision: str | None = None,
                        strict: bool = True):
        """Load from a folder (config.json + weights), a weights file (config.json beside it or ``config``), or
        a Hugging Face repo id. Returns the model in eval mode on CPU."""
        return cls.from_checkpoint(open_checkpoint(name_or_path, revision), config, strict=strict)

    def load_tensors(self, tensors: Mapping[str, Tensor], aliases: Mapping[str, str] | None = None,
                     path: str | os.PathLike | None = None, strict: bool = True):
        """Load a state dict (legacy layouts remapped) strictly; errors name ``path`` and the keys."""
        load_weights(self, self._remap_state_dict(dict(tensors)), aliases, path, strict=strict)
        return self

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_open(directory / CONFIG_NAME, "w") as f:
            json.dump(self.config.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        save_weights(self, directory / WEIGHTS_NAME)
        return directory


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "Checkpoint", "HubMixin", "deduplicate", "find_weights", "load_weights",
           "open_checkpoint", "read_config", "read_state_dict", "resolve", "save_weights", "tied_groups"]
