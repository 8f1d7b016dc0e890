"""The inference context the networks' convenience entries share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def inference(module: nn.Module, device_type: str, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Eval mode, ``torch.inference_mode`` and, when ``dtype`` is given, autocast to it on ``device_type``;
    the module's training flag is restored on exit."""
    was_training = module.training
    autocast = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        module.eval()
        with torch.inference_mode(), autocast:
            yield
    finally:
        module.train(was_training)
