"""Which torch device to run on: the one place ``auto`` / ``cpu`` / ``cuda`` becomes a ``torch.device``."""

from __future__ import annotations

import torch

from manyview.errors import ManyviewError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` (or ``cuda:N``) without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ManyviewError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ManyviewError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return device


__all__ = ["resolve_device"]
