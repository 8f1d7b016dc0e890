"""Decoding one image file: Pillow behind a size guard, EXIF orientation, 16-bit data, JPEG draft decoding.

:func:`open_image` reads the header only and refuses oversized images before any pixel is decoded;
:func:`decode_transformed` decodes the pixels an :class:`~manyview.scene.resize.ImageTransform` asks for, resampling
once, straight from the stored pixels to the output (the exact transposition that shows the image upright comes
last). What the readers built on this promise (alpha, 16-bit scaling, drafting) is listed in
:mod:`manyview.io.images`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene.resize import ImageTransform

DEFAULT_MAX_PIXELS = 178_956_970  # == 2 * PIL.Image.MAX_IMAGE_PIXELS (Pillow's default hard limit)
_EXIF_ORIENTATION = 0x0112

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# EXIF orientation -> the transposition that shows the stored pixels upright (EXIF 2.3, tag 0x0112).
_ORIENT_OP = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class OpenedImage:
    """An image opened for its header: Pillow's lazy handle, the EXIF orientation to apply, the sizes."""

    image: Image.Image
    path: Path
    orientation: int  # 1 = as stored
    raw_size: tuple[int, int]  # (H, W) as stored
    data: bytes | None = None  # the encoded file when it came from memory, not from ``path``
    upright_size: tuple[int, int] = field(init=False)

    def __post_init__(self):
        h, w = self.raw_size
        self.upright_size = (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)


def open_image(path: Path, max_pixels: int, exif_orientation: bool, data: bytes | None = None) -> OpenedImage:
    """Open lazily (header only) and refuse oversized images before any pixel is decoded.

    ``data``: the encoded image in memory; ``path`` then only names it in messages.
    """
    if data is None and not path.is_file():
        raise ManyviewError("image file not found" if not path.exists() else "not a file", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path if data is None else io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ManyviewError(f"image is larger than Pillow's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                            "(decompression-bomb protection); refusing to decode it", path) from None
    except UnidentifiedImageError:
        size = path.stat().st_size if data is None else len(data)
        what = "empty file (0 bytes)" if size == 0 else "not a readable image (unknown or corrupt format)"
        raise ManyviewError(what, path) from None
    except OSError as e:
        raise ManyviewError(f"cannot open image: {e}", path) from None
    w, h = image.size
    if w * h > max_pixels:
        image.close()
        raise ManyviewError(f"image is {w} x {h} = {w * h} pixels, more than the limit of {max_pixels} "
                            "(ImageLoadPolicy.max_pixels); refusing to decode it", path)
    orientation = 1
    if exif_orientation:
        try:
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:  # a broken EXIF block should not make a good image unreadable
            orientation = 1
        orientation = orientation if orientation in _ORIENT_OP else 1
    return OpenedImage(image, path, orientation, (h, w), data)


def _png_bit_depth(op: OpenedImage) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None for other files."""
    if op.data is not None:
        head = op.data[:26]
    else:
        with open(op.path, "rb") as f:
            head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def _decode_planes(op: OpenedImage, alpha: str, draft_size: tuple[int, int] | None) -> tuple[list[Image.Image], float]:
    """Decode to upright-unaware planes: one RGB image (8-bit data) or three 'F' images (16-bit data).

    Returns the planes and the scale from stored pixels to decoded pixels (< 1 when the JPEG decoder drafted).
    """
    image, scale = op.image, 1.0
    try:
        png = _png_bit_depth(op) if image.format == "PNG" else None
        if png is not None and png[0] == 16 and png[1] in (2, 6):  # 16-bit colour PNG: Pillow would truncate it
            arr = _decode_16bit_colour(op)
            rgb = arr[..., 2::-1] / 65535.0
            if arr.shape[-1] == 4 and alpha == "white":
                a = arr[..., 3:4] / 65535.0
                rgb = rgb * a + (1.0 - a)
            return [Image.fromarray(np.ascontiguousarray(rgb[..., c], dtype=np.float32), "F") for c in range(3)], 1.0
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            gray = np.asarray(image, dtype=np.float32) / 65535.0
            plane = Image.fromarray(np.clip(gray, 0.0, 1.0).astype(np.float32), "F")
            return [plane, plane, plane], 1.0
        if image.mode == "F":
            plane = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), "F")
            return [plane, plane, plane], 1.0
        if draft_size is not None and image.format == "JPEG":
            drafted = image.draft("RGB", draft_size)
            if drafted is not None:
                scale = drafted[1][2] / op.raw_size[1]
        has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
        if has_alpha and alpha == "white":
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return [Image.alpha_composite(background, rgba).convert("RGB")], scale
        return [image.convert("RGB")], scale
    except ManyviewError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data surfaces only when decoding
        raise ManyviewError(f"cannot decode image: {e}", op.path) from None


def _decode_16bit_colour(op: OpenedImage) -> np.ndarray:
    import cv2

    # imdecode from bytes: cv2.imread mishandles non-ASCII paths on some platforms
    data = np.frombuffer(op.data, dtype=np.uint8) if op.data is not None else np.fromfile(op.path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise ManyviewError("cannot decode 16-bit PNG", op.path)
    return arr.astype(np.float32)


def _box_to_stored(box: tuple[float, float, float, float], orientation: int, upright_hw: tuple[int, int]):
    """A box (left, top, right, bottom) in upright coordinates -> the same region in stored coordinates."""
    H, W = upright_hw
    inverse = {  # upright (x, y) -> stored (x, y), continuous coordinates
        1: lambda x, y: (x, y),
        2: lambda x, y: (W - x, y),
        3: lambda x, y: (W - x, H - y),
        4: lambda x, y: (x, H - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (y, W - x),
        7: lambda x, y: (H - y, W - x),
        8: lambda x, y: (H - y, x),
    }[orientation]
    (x0, y0), (x1, y1) = inverse(box[0], box[1]), inverse(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def decode_transformed(op: OpenedImage, transform: ImageTransform, resample: str = "lanczos",
                       alpha: str = "white", draft: bool = True) -> np.ndarray:
    """The pixels of ``transform`` (planned on ``op.upright_size``): (H, W, 3) uint8, or float32 in [0, 1] for
    16-bit and float data."""
    resized, crop = transform.resized_size, transform.crop
    top, left, th, tw = crop
    H0, W0 = op.upright_size
    # The crop as a region of the upright original, then of the stored pixels: resampling is done once, straight
    # from the stored pixels to the output, and the (cheap, exact) transposition comes last.
    sy, sx = resized[0] / H0, resized[1] / W0
    box = _box_to_stored((left / sx, top / sy, (left + tw) / sx, (top + th) / sy), op.orientation, op.upright_size)
    swap = op.orientation in (5, 6, 7, 8)
    out_stored = (th, tw) if not swap else (tw, th)  # (rows, cols) before transposing
    draft_size = None
    if draft and min(resized[0] / H0, resized[1] / W0) <= 0.5:
        need = (resized[1], resized[0]) if not swap else (resized[0], resized[1])  # stored (W, H) of the resize
        draft_size = (max(1, need[0]), max(1, need[1]))
    planes, scale = _decode_planes(op, alpha, draft_size)
    box = tuple(v * scale for v in box)
    unscaled = tuple(resized) == tuple(op.upright_size) and scale == 1.0  # a pure crop: pixels kept exactly
    out = []
    for plane in planes:
        if unscaled:
            plane = plane.crop(tuple(int(round(v)) for v in box))
        else:
            plane = plane.resize((out_stored[1], out_stored[0]), RESAMPLE[resample], box=box)
        if op.orientation != 1:
            plane = plane.transpose(_ORIENT_OP[op.orientation])
        out.append(plane)
    if len(out) == 1:  # 8-bit: stays uint8 until it is copied into the batch
        return np.asarray(out[0])
    return np.clip(np.stack([np.asarray(p, dtype=np.float32) for p in out], axis=-1), 0.0, 1.0)


def to_chw_float(arr: np.ndarray, out: Tensor | None = None) -> Tensor:
    """(H, W, 3) uint8 or float in [0, 1] -> (3, H, W) float32, written into ``out`` when given."""
    src = torch.from_numpy(np.array(arr, copy=not arr.flags.writeable, order="C")).permute(2, 0, 1)
    out = torch.empty(src.shape, dtype=torch.float32) if out is None else out
    out.copy_(src)
    return out.div_(255.0) if arr.dtype == np.uint8 else out


__all__ = ["DEFAULT_MAX_PIXELS", "RESAMPLE", "OpenedImage", "decode_transformed", "open_image", "to_chw_float"]
