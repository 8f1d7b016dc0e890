"""Image files -> tensors: JPEG / PNG / WebP in, RGB float32 in [0, 1] out, every resize and crop recorded.

Reading (``load_images``) gives a :class:`~manyview.scene.Views` whose images all share one size, plus one
:class:`~manyview.scene.resize.ImageTransform` per image saying how the file's pixels were resampled and cropped,
so that cameras known for the original files can be moved onto the loaded images
(:func:`~manyview.scene.resize.apply_to_cameras`). :class:`ImageLoadPolicy` says what the common size is.

Decisions, so callers know what they get:

- EXIF orientation is applied (the image is shown upright, as a photo viewer would), unless told otherwise.
- Grayscale and palette images become RGB. Transparency is composited onto white by default
  (``alpha="white"``: RGBA object renders then look like the usual white-background datasets); ``alpha="drop"``
  ignores the alpha channel instead.
- 16-bit PNGs (grayscale or colour) are scaled by 1 / 65535, not truncated to 8 bits.
- Images of more than ``max_pixels`` pixels are refused before they are decoded. The default,
  178 956 970 px (about 13 377 x 13 377), is Pillow's own hard decompression-bomb limit
  (``2 * PIL.Image.MAX_IMAGE_PIXELS``); Pillow refuses anything beyond its limit as well, so raising
  ``max_pixels`` above it also needs ``PIL.Image.MAX_IMAGE_PIXELS`` raised.
- When an image is downscaled at least twofold, JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the decoder
  itself (``Image.draft``), which saves most of the decoding time and memory for large photos;
  ``ImageLoadPolicy(draft=False)`` decodes at full size (the reference path).

Decoding itself is in :mod:`manyview.io.image_decode`; writing images in :mod:`manyview.io.image_writers`; depth
maps and masks in :mod:`manyview.io.pixel_maps`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.image_decode import (DEFAULT_MAX_PIXELS, RESAMPLE, OpenedImage, decode_transformed, open_image,
                                      to_chw_float)
from manyview.scene import Views
from manyview.scene.resize import ImageTransform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class ImageLoadPolicy:
    """How a set of image files becomes one (N, 3, H, W) tensor.

    The common size is ``size`` when given; otherwise it is the first image's size, scaled so that its long side
    is ``long_side`` (when given), then rounded down to multiples of ``patch_multiple``. Every image is scaled
    (aspect ratio kept) to cover that size and cropped to it (``crop="center"``), or scaled to it exactly, aspect
    ratio not kept (``crop="none"``).
    """

    size: tuple[int, int] | None = None  # (H, W) of the output
    long_side: int | None = None
    patch_multiple: int = 1
    crop: Literal["center", "none"] = "center"
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: Literal["white", "drop"] = "white"
    resample: Literal["lanczos", "bicubic", "bilinear", "nearest"] = "lanczos"
    exif_orientation: bool = True
    draft: bool = True

    def __post_init__(self):
        if self.patch_multiple < 1:
            raise ValueError(f"patch_multiple must be >= 1, got {self.patch_multiple}")
        if self.size is not None:
            h, w = self.size
            if h < 1 or w < 1 or h % self.patch_multiple or w % self.patch_multiple:
                raise ValueError(f"size {self.size} must be positive multiples of patch_multiple={self.patch_multiple}")
        if self.long_side is not None and self.long_side < 1:
            raise ValueError(f"long_side must be >= 1, got {self.long_side}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        if self.alpha not in ("white", "drop"):
            raise ValueError(f"alpha must be 'white' or 'drop', got {self.alpha!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The common (H, W) for a set whose first image is ``height`` x ``width``."""
        if self.size is not None:
            return tuple(self.size)
        s = self.long_side / max(height, width) if self.long_side else 1.0
        p = self.patch_multiple
        h, w = max(1, round(height * s)), max(1, round(width * s))
        return max(p, h // p * p), max(p, w // p * p)


# --------------------------------------------------------------------------------------------- listing files
def natural_key(name: str) -> list:
    """Sort key putting ``img2`` before ``img10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, natural-sorted; other files and hidden files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManyviewError("not a folder", folder)
    files = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    if not files:
        raise ManyviewError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder", folder)
    return sorted(files, key=lambda p: natural_key(p.name))


# --------------------------------------------------------------------------------------------- loading
def _load_one(op: OpenedImage, target: tuple[int, int], policy: ImageLoadPolicy) -> tuple[np.ndarray, ImageTransform]:
    transform = ImageTransform.fitting(op.upright_size, target, policy.crop, str(op.path))
    return decode_transformed(op, transform, policy.resample, policy.alpha, policy.draft), transform


def read_image(path: str | os.PathLike, policy: ImageLoadPolicy | None = None,
               target: tuple[int, int] | None = None) -> tuple[Tensor, ImageTransform]:
    """One file -> (3, H, W) float32 in [0, 1] and its transform; ``target`` (H, W) overrides the policy's size."""
    policy = policy or ImageLoadPolicy()
    op = open_image(Path(path), policy.max_pixels, policy.exif_orientation)
    try:
        target = target or policy.target_size(*op.upright_size)
        arr, transform = _load_one(op, target, policy)
    finally:
        op.image.close()
    return to_chw_float(arr), transform


def read_image_size(path: str | os.PathLike, exif_orientation: bool = True,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(H, W) of an image file (upright), from its header only."""
    op = open_image(Path(path), max_pixels, exif_orientation)
    op.image.close()
    return op.upright_size


def load_image_files(paths: Sequence[str | os.PathLike], policy: ImageLoadPolicy | None = None,
                     names: Sequence[str] | None = None,
                     exif_orientation: Sequence[bool] | None = None) -> tuple[Views, list[ImageTransform]]:
    """Files -> ``Views`` (cameras None) of one common size, and one ``ImageTransform`` per file.

    ``names`` default to the file names; ``exif_orientation`` overrides the policy per file (a reader that knows
    its cameras were computed on the stored pixels turns it off for those files).
    """
    policy = policy or ImageLoadPolicy()
    paths = [Path(p) for p in paths]
    if not paths:
        raise ManyviewError("no image files given")
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(names)} names")
    orient = list(exif_orientation) if exif_orientation is not None else [policy.exif_orientation] * len(paths)
    openers = [partial(open_image, path, policy.max_pixels, use_exif) for path, use_exif in zip(paths, orient)]
    images, transforms = _load_batch(openers, policy)
    names = list(names) if names is not None else [p.name for p in paths]
    return Views(images=images, names=names), transforms


def load_image_bytes(blobs: Sequence[bytes], policy: ImageLoadPolicy | None = None, names: Sequence[str] = (),
                     label: str = "<memory>") -> tuple[Views, list[ImageTransform]]:
    """Encoded images in memory (e.g. JPEG frames of a dataset chunk) -> ``Views`` and transforms.

    Stored orientation is kept (no EXIF rotation): such frames come with cameras for their stored pixels.
    """
    policy = policy or ImageLoadPolicy()
    if not blobs:
        raise ManyviewError("no images given", label)
    names = list(names) or [f"{i:05d}" for i in range(len(blobs))]
    openers = [partial(open_image, Path(f"{label} [{name}]"), policy.max_pixels, False, data=bytes(blob))
               for blob, name in zip(blobs, names)]
    images, transforms = _load_batch(openers, policy)
    return Views(images=images, names=names), transforms


def _load_batch(openers: Sequence[Callable[[], OpenedImage]],
                policy: ImageLoadPolicy) -> tuple[Tensor, list[ImageTransform]]:
    """Open, decode, resize and crop one image at a time into one preallocated (N, 3, H, W) tensor."""
    images, transforms, target = None, [], None
    for i, opener in enumerate(openers):
        op = opener()
        try:
            target = target or policy.target_size(*op.upright_size)
            arr, transform = _load_one(op, target, policy)
        finally:
            op.image.close()
        if images is None:
            images = torch.empty((len(openers), 3) + tuple(target), dtype=torch.float32)
        to_chw_float(arr, images[i])
        transforms.append(transform)
    return images, transforms


def load_images(source: str | os.PathLike | Sequence[str | os.PathLike],
                policy: ImageLoadPolicy | None = None) -> tuple[Views, list[ImageTransform]]:
    """A folder (its images, natural-sorted), one image file, or a list of files -> ``Views`` and transforms."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        paths = list_images(p) if p.is_dir() else [p]
    else:
        paths = [Path(s) for s in source]
    return load_image_files(paths, policy)


__all__ = ["IMAGE_EXTENSIONS", "ImageLoadPolicy", "is_image_file", "list_images", "load_image_bytes",
           "load_image_files", "load_images", "natural_key", "read_image", "read_image_size"]
