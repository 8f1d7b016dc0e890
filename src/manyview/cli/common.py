"""What several commands do with their options the same way: image inputs named on the command line, the square
size of a novel-view model, and what an interrupted command that builds its output whole has kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from manyview.errors import ManyviewError


def image_files(inputs: Sequence[Path], option: str) -> list[Path]:
    """The image files named by ``option``: one folder (its images, natural-sorted) or the files themselves.

    Every file is checked before any work starts: a missing path, a folder among files, or an empty file is an
    error naming it (an empty file would otherwise only fail after models are loaded, or be miscounted)."""
    from manyview.io.images import list_images

    if not inputs:
        raise ManyviewError(f"no input images given: pass a folder of images or image files to {option}")
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        files = list_images(inputs[0])
    else:
        files = [Path(p) for p in inputs]
    for file in files:
        if not file.exists():
            raise ManyviewError("no such file or folder", file)
        if file.is_dir():
            raise ManyviewError(f"a folder among image files: {option} takes one folder or image files", file)
        if file.stat().st_size == 0:
            raise ManyviewError("empty file (0 bytes), not an image", file)
    return files


def model_size(model, size: int | None, option: str = "--size") -> int:
    """A novel-view model's square input size: ``size`` or the size it was trained at, a multiple of its patch."""
    p = model.config.patch_size
    size = model.config.image_size if size is None else size
    if size < p or size % p:
        raise ManyviewError(f"{option} must be a positive multiple of the model's patch size {p}, got {size}")
    return size


def left_as_it_was(out: Path) -> str:
    """What Ctrl-C leaves of an output built under a temporary name (io.atomic.atomic_directory)."""
    return f"{out} was left as it was (it is built under a temporary name and renamed when complete)"


def launcher_world_size() -> int:
    """How many processes the launcher (torchrun) started: ``WORLD_SIZE``, 1 without one."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise ManyviewError(f"environment variable WORLD_SIZE={value!r} is not an integer") from None


__all__ = ["image_files", "launcher_world_size", "left_as_it_was", "model_size"]
