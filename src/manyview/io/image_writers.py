"""Images out: (3, H, W) / (H, W) tensors or arrays -> PNG / JPEG / WebP files (atomically) or JPEG bytes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_path


def to_hwc_uint8(image: Tensor | np.ndarray, path: Path) -> np.ndarray:
    """Tensors are (3, H, W) / (1, H, W) / (H, W) as everywhere in manyview; numpy arrays (H, W, 3) / (H, W)."""
    if isinstance(image, Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ManyviewError(f"cannot write an image of shape {tuple(image.shape)}: expected a (3, H, W) tensor, "
                            "an (H, W, 3) array or (H, W)", path)
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return np.round(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: str | os.PathLike, image: Tensor | np.ndarray, quality: int = 95) -> Path:
    """Write (3, H, W) / (H, W) float in [0, 1] (or uint8; uint16 for PNG) as PNG, JPEG or WebP, atomically."""
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ManyviewError(f"unsupported image extension {path.suffix!r}; use .png, .jpg or .webp", path)
    arr = to_hwc_uint8(image, path)
    if arr.dtype == np.uint16:
        if fmt != "PNG" or arr.ndim != 2:
            raise ManyviewError("16-bit data can only be written as a single-channel PNG", path)
        pil = Image.fromarray(arr)
    else:
        pil = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **kwargs)
    return path


def encode_jpeg(image: Tensor | np.ndarray, quality: int = 95) -> bytes:
    """(3, H, W) float in [0, 1] -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_hwc_uint8(image, Path("<memory>")), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


__all__ = ["encode_jpeg", "to_hwc_uint8", "write_image"]
