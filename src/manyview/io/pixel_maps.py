"""Per-pixel maps as files: depth maps and masks, read and written.

Depth maps are written as ``.npy`` float32 z-depth in scene units (exact; the default) or as 16-bit PNG in
millimetres (``units_per_metre=1000``; the common RGB-D / nerfstudio convention, range 0 to 65.535 m, 0 = unknown).
Masks are 8-bit PNGs, 255 = True.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_path
from manyview.io.image_writers import write_image


def write_depth(path: str | os.PathLike, depth: Tensor | np.ndarray, units_per_metre: float = 1000.0) -> Path:
    """Write z-depth (H, W): ``.npy`` float32 as is, or ``.png`` 16-bit in ``depth * units_per_metre`` (mm).

    Non-finite values become 0 (unknown) in PNG; a depth beyond the 16-bit range is refused (use .npy).
    """
    path = Path(path)
    arr = depth.detach().cpu().numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    if arr.ndim != 2:
        raise ManyviewError(f"depth must be (H, W), got shape {arr.shape}", path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr.astype(np.float32), allow_pickle=False)
        return path
    if suffix != ".png":
        raise ManyviewError(f"unsupported depth extension {path.suffix!r}; use .npy or .png", path)
    scaled = np.where(np.isfinite(arr), arr, 0.0).astype(np.float64) * units_per_metre
    if scaled.size and (scaled.min() < 0 or scaled.max() > 65535.49):
        raise ManyviewError(f"depth range [{arr.min():.4g}, {arr.max():.4g}] does not fit a 16-bit PNG at "
                            f"{units_per_metre:g} units per metre; write .npy instead", path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(scaled).astype(np.uint16)).save(tmp, format="PNG")
    return path


def read_depth(path: str | os.PathLike, units_per_metre: float = 1000.0) -> Tensor:
    """Read a depth map written by ``write_depth`` (or any 16-bit PNG / float .npy) -> (H, W) float32."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("depth file not found", path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ManyviewError(f"cannot read depth array: {e}", path) from None
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ManyviewError(f"depth array must be numeric (H, W), got {arr.dtype} {arr.shape}", path)
        return torch.from_numpy(arr.astype(np.float32))
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ManyviewError(f"cannot read depth image: {e}", path) from None
    if arr.ndim != 2:
        raise ManyviewError(f"depth image must be single-channel, got shape {arr.shape}", path)
    return torch.from_numpy(arr.astype(np.float32) / units_per_metre)


def write_mask(path: str | os.PathLike, mask: Tensor | np.ndarray) -> Path:
    """Boolean (H, W) -> 8-bit PNG (255 = True)."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    return write_image(path, (arr > 0.5) if arr.dtype != bool else arr)


def read_mask(path: str | os.PathLike) -> Tensor:
    """Image -> (H, W) bool: True where the (gray) value is at least half the range."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("mask file not found", path)
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16L", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ManyviewError(f"cannot read mask image: {e}", path) from None
    return torch.from_numpy(arr >= 0.5)



__all__ = ["read_depth", "read_mask", "write_depth", "write_mask"]
