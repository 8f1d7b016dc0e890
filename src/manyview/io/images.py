"""Image files <-> tensors: JPEG / PNG / WebP in, RGB float32 in [0, 1] out, every resize and crop recorded.

Reading (``load_images``) gives a :class:`~manyview.scene.Views` whose images all share one size, plus one
:class:`ImageTransform` per image saying how the file's pixels were resampled and cropped, so that cameras known
for the original files can be moved onto the loaded images (``apply_to_cameras``).

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

Depth maps are written as ``.npy`` float32 z-depth in scene units (exact; the default) or as 16-bit PNG in
millimetres (``units_per_metre=1000``; the common RGB-D / nerfstudio convention, range 0 to 65.535 m, 0 = unknown).
Masks are 8-bit PNGs, 255 = True.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_path
from manyview.scene import Cameras, Views

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MAX_PIXELS = 178_956_970  # == 2 * PIL.Image.MAX_IMAGE_PIXELS (Pillow's default hard limit)
_EXIF_ORIENTATION = 0x0112

_RESAMPLE = {
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
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The common (H, W) for a set whose first image is ``height`` x ``width``."""
        if self.size is not None:
            return tuple(self.size)
        s = self.long_side / max(height, width) if self.long_side else 1.0
        p = self.patch_multiple
        h, w = max(1, round(height * s)), max(1, round(width * s))
        return max(p, h // p * p), max(p, w // p * p)


@dataclass(frozen=True)
class ImageTransform:
    """How one file's pixels became the loaded image: scale the whole (upright) image, then crop."""

    source: str
    original_size: tuple[int, int]  # (H, W) of the file, after EXIF orientation
    resized_size: tuple[int, int]  # (H, W) the whole image was resampled to
    crop: tuple[int, int, int, int]  # (top, left, height, width) taken from the resized image

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]

    def apply(self, cameras: Cameras) -> Cameras:
        """Cameras of the original file -> cameras of the loaded image.

        Cameras whose ``image_size`` differs from the file's (e.g. COLMAP run on full-size photos, images stored
        downsampled) are first rescaled to the file's size, provided the aspect ratios agree to 1 %.
        """
        h0, w0 = self.original_size
        size = cameras.image_size.reshape(-1, 2)
        ch, cw = size[:, 0].double(), size[:, 1].double()
        if bool(((ch != h0) | (cw != w0)).any()):
            ratio = (cw / ch) / (w0 / h0)
            if bool(((ratio - 1).abs() > 0.01).any()):
                raise ManyviewError(
                    f"camera image size {size[0].tolist()[::-1]} (W x H) does not match the file's "
                    f"{w0} x {h0}, and the aspect ratios differ", self.source)
            cameras = cameras.resized(h0, w0)
        top, left, h, w = self.crop
        return cameras.resized(*self.resized_size).cropped(top, left, h, w)

    def apply_map(self, x: Tensor, mode: str = "nearest-exact") -> Tensor:
        """Resample a per-pixel map (..., h, w) covering the same view (depth, mask, normals) like the image.

        Nearest sampling (pixel centres aligned) keeps depth edges and boolean masks exact; the map may have
        any resolution.
        """
        lead = x.shape[:-2]
        flat = x.reshape((-1, 1) + tuple(x.shape[-2:]))
        dtype = flat.dtype
        work = flat.float() if dtype in (torch.bool, torch.uint8) or not dtype.is_floating_point else flat
        if tuple(work.shape[-2:]) != tuple(self.resized_size):
            work = torch.nn.functional.interpolate(work, size=self.resized_size, mode=mode)
        top, left, h, w = self.crop
        out = work[..., top:top + h, left:left + w]
        if dtype == torch.bool:
            out = out > 0.5
        elif not dtype.is_floating_point:
            out = out.round().to(dtype)
        return out.reshape(lead + (h, w))


def apply_to_cameras(cameras: Cameras, transforms: Sequence[ImageTransform]) -> Cameras:
    """Apply each image's transform to its camera: ``cameras`` (N,) of the original files -> of the loaded images."""
    if len(cameras) != len(transforms):
        raise ValueError(f"{len(cameras)} cameras but {len(transforms)} image transforms")
    return Cameras.cat([t.apply(cameras[i:i + 1]) for i, t in enumerate(transforms)])


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


# --------------------------------------------------------------------------------------------- decoding
@dataclass
class _Opened:
    image: Image.Image
    path: Path
    orientation: int  # 1 = as stored
    raw_size: tuple[int, int]  # (H, W) as stored
    data: bytes | None = None  # the encoded file when it came from memory, not from ``path``
    upright_size: tuple[int, int] = field(init=False)

    def __post_init__(self):
        h, w = self.raw_size
        self.upright_size = (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)


def open_image(path: Path, max_pixels: int, exif_orientation: bool, data: bytes | None = None) -> _Opened:
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
    return _Opened(image, path, orientation, (h, w), data)


def _png_bit_depth(op: _Opened) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None for other files."""
    if op.data is not None:
        head = op.data[:26]
    else:
        with open(op.path, "rb") as f:
            head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def _decode_planes(op: _Opened, alpha: str, draft_size: tuple[int, int] | None) -> tuple[list[Image.Image], float]:
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


def _decode_16bit_colour(op: _Opened) -> np.ndarray:
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


def plan_resize_and_crop(upright_hw: tuple[int, int], target: tuple[int, int],
          crop: str) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized (H, W), crop (top, left, H, W)) bringing an image of ``upright_hw`` to ``target``."""
    h, w = upright_hw
    th, tw = target
    if crop == "none":
        return (th, tw), (0, 0, th, tw)
    s = max(th / h, tw / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    return (rh, rw), ((rh - th) // 2, (rw - tw) // 2, th, tw)


def _load_one(op: _Opened, target: tuple[int, int], policy: ImageLoadPolicy) -> tuple[np.ndarray, ImageTransform]:
    resized, crop = plan_resize_and_crop(op.upright_size, target, policy.crop)
    top, left, th, tw = crop
    H0, W0 = op.upright_size
    # The crop as a region of the upright original, then of the stored pixels: resampling is done once, straight
    # from the stored pixels to the output, and the (cheap, exact) transposition comes last.
    sy, sx = resized[0] / H0, resized[1] / W0
    box = _box_to_stored((left / sx, top / sy, (left + tw) / sx, (top + th) / sy), op.orientation, op.upright_size)
    swap = op.orientation in (5, 6, 7, 8)
    out_stored = (th, tw) if not swap else (tw, th)  # (rows, cols) before transposing
    draft = None
    if policy.draft and min(resized[0] / H0, resized[1] / W0) <= 0.5:
        need = (resized[1], resized[0]) if not swap else (resized[0], resized[1])  # stored (W, H) of the resize
        draft = (max(1, need[0]), max(1, need[1]))
    planes, scale = _decode_planes(op, policy.alpha, draft)
    box = tuple(v * scale for v in box)
    unscaled = resized == op.upright_size and scale == 1.0  # a pure crop: no resampling, pixels kept exactly
    out = []
    for plane in planes:
        if unscaled:
            plane = plane.crop(tuple(int(round(v)) for v in box))
        else:
            plane = plane.resize((out_stored[1], out_stored[0]), _RESAMPLE[policy.resample], box=box)
        if op.orientation != 1:
            plane = plane.transpose(_ORIENT_OP[op.orientation])
        out.append(plane)
    if len(out) == 1:  # 8-bit: stays uint8 until it is copied into the batch
        arr = np.asarray(out[0])
    else:
        arr = np.clip(np.stack([np.asarray(p, dtype=np.float32) for p in out], axis=-1), 0.0, 1.0)
    return arr, ImageTransform(str(op.path), op.upright_size, resized, crop)


def _to_chw_float(arr: np.ndarray, out: Tensor | None = None) -> Tensor:
    """(H, W, 3) uint8 or float in [0, 1] -> (3, H, W) float32, written into ``out`` when given."""
    src = torch.from_numpy(np.array(arr, copy=not arr.flags.writeable, order="C")).permute(2, 0, 1)
    out = torch.empty(src.shape, dtype=torch.float32) if out is None else out
    out.copy_(src)
    return out.div_(255.0) if arr.dtype == np.uint8 else out


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
    return _to_chw_float(arr), transform


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


def _load_batch(openers: Sequence[Callable[[], _Opened]],
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
        _to_chw_float(arr, images[i])
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


# --------------------------------------------------------------------------------------------- writing
def _to_hwc_uint8(image: Tensor | np.ndarray, path: Path) -> np.ndarray:
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
    arr = _to_hwc_uint8(image, path)
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
    Image.fromarray(_to_hwc_uint8(image, Path("<memory>")), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


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

