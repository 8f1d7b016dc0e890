"""Tensor files in: safetensors and PyTorch pickles, read so that no file can run code.

The one place manyview calls ``torch.load`` or a safetensors reader (the trainer's own resumable checkpoints aside,
in :mod:`manyview.train.checkpoint`). Pickles are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so a pickle that needs any other Python object (which could run code when unpickled) is refused
before anything in it runs. Every failure is one :class:`ManyviewError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from manyview.errors import ManyviewError

Format = Literal["safetensors", "pickle"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ManyviewError("file not found", path)
    if not path.is_file():
        raise ManyviewError("expected a file, found a folder" if path.is_dir() else "not a regular file", path)
    return path


def sniff_format(path: str | os.PathLike) -> Format | None:
    """The container format from the first bytes, whatever the file is called: safetensors (an 8-byte header
    length, then the JSON header), a PyTorch zip archive, or a legacy PyTorch pickle; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "pickle"
    return None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on CPU, the header's metadata) of a safetensors file."""
    from safetensors import safe_open

    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError for a truncated or corrupt file, OSError, ...: one line naming the file
        raise ManyviewError(f"cannot read: damaged or not a safetensors file ({_first_line(e)})", path) from None
    return tensors, dict(metadata)


def _refusal(error: pickle.UnpicklingError) -> str:
    """What torch's restricted unpickler refused, in a few words (its own message advises unsafe loading)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return found.group(1).strip()[:200] if found else "objects other than tensors and plain containers"


def read_pickle(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """A PyTorch pickle read with ``torch.load(weights_only=True)``, on CPU: tensors and plain containers only."""
    path = _existing_file(path)
    try:
        # an open file, not the name: newer torch picks a reader by the name's suffix, not by the content
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it did not write itself
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise ManyviewError(f"refusing to load: this {what} is a pickle that carries Python objects (code; "
                                f"{_refusal(e)}); manyview loads only safetensors or plain tensor checkpoints",
                                path) from None
        raise ManyviewError(f"cannot read: damaged or not a PyTorch file ({_first_line(e)})", path) from None
    except Exception as e:  # RuntimeError (bad zip), EOFError (empty), KeyError / ValueError (garbage bytes)
        raise ManyviewError(f"cannot read: damaged or not a PyTorch file ({_first_line(e)})", path) from None


__all__ = ["read_pickle", "read_safetensors", "sniff_format"]
