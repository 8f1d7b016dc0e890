"""Progress reporting for long work: one tqdm bar, on stderr, silenced with MANYVIEW_QUIET=1."""

from __future__ import annotations

import os
import weakref
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Bars still open; an error that interrupts the work leaves its bar mid-line, so whoever prints the error first
# ends them (:func:`end_bars`).
_open_bars: "weakref.WeakSet[tqdm]" = weakref.WeakSet()


def quiet() -> bool:
    return os.environ.get("MANYVIEW_QUIET", "") not in ("", "0")


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
             enabled: bool = True, **kwargs) -> "tqdm[T]":
    """A progress bar over ``iterable`` (or a manual one when ``iterable`` is None; call ``.update(n)``)."""
    bar = tqdm(iterable, desc=desc, total=total, disable=(not enabled) or quiet(), dynamic_ncols=True,
               leave=False, **kwargs)
    if not bar.disable:
        _open_bars.add(bar)
    return bar


def end_bars() -> None:
    """Close the bars left open by work that stopped (an exception, Ctrl-C), each ending its line where it stood,
    so that a message printed next starts on a line of its own."""
    for bar in list(_open_bars):
        _open_bars.discard(bar)
        if bar.disable:  # already closed
            continue
        bar.leave = True  # keep the bar where it stopped, and end its line
        bar.close()
