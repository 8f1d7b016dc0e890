"""Progress reporting for long work: one tqdm bar, on stderr, silenced with MANYVIEW_QUIET=1."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("MANYVIEW_QUIET", "") not in ("", "0")


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
             enabled: bool = True, **kwargs) -> "tqdm[T]":
    """A progress bar over ``iterable`` (or a manual one when ``iterable`` is None; call ``.update(n)``)."""
    return tqdm(iterable, desc=desc, total=total, disable=(not enabled) or quiet(), dynamic_ncols=True,
                leave=False, **kwargs)
