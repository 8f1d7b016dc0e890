"""Input checks shared by the LVSM family: bad tensors and cameras get one clear ManyviewError.

The models take tensors, so there is no path to name; each message names the views (input / target) and what is
wrong with them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras


def reject(message: str):
    """Bad input to an LVSM-family model (tensors, so no path to name)."""
    raise ManyviewError(message)


def check_views(images: Tensor, fxfycxcy: Tensor, c2w: Tensor, patch_size: int, what: str = "input") -> None:
    """Shapes and values of posed input views; raises ManyviewError naming the problem."""
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[2] != 3:
        reject(f"{what} images must be a tensor (B, V, 3, H, W), got "
               f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    b, v, _, h, w = images.shape
    if v == 0 or b == 0:
        reject(f"no {what} views: images have shape {tuple(images.shape)}; LVSM needs at least one posed view")
    check_cameras(fxfycxcy, c2w, (b, v), what)
    check_size(h, w, patch_size, what)
    if not images.is_meta and not torch.isfinite(images).all():
        reject(f"{what} images contain NaN or infinite values")


def check_cameras(fxfycxcy: Tensor, c2w: Tensor, batch: tuple[int, int], what: str) -> None:
    if tuple(fxfycxcy.shape) != batch + (4,) or tuple(c2w.shape) != batch + (4, 4):
        reject(f"{what} cameras do not match the views: expected fxfycxcy {batch + (4,)} and c2w "
               f"{batch + (4, 4)}, got {tuple(fxfycxcy.shape)} and {tuple(c2w.shape)}")
    if batch[1] == 0:
        reject(f"no {what} views given")
    if fxfycxcy.is_meta or c2w.is_meta:
        return
    if not torch.isfinite(c2w).all():
        reject(f"{what} camera poses contain NaN or infinite values")
    if not torch.isfinite(fxfycxcy).all() or not (fxfycxcy[..., :2] > 0).all():
        reject(f"{what} intrinsics must be finite with positive focal lengths")


def check_size(h: int, w: int, patch_size: int, what: str) -> None:
    if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        reject(f"{what} image size {h}x{w} is not a positive multiple of the patch size {patch_size}")


def camera_image_size(cameras: Cameras, what: str) -> tuple[int, int]:
    """The one (H, W) shared by all cameras, or a ManyviewError."""
    sizes = cameras.image_size.reshape(-1, 2)
    if sizes.shape[0] == 0:
        reject(f"no {what} cameras given")
    if not (sizes == sizes[:1]).all():
        reject(f"{what} cameras have different image sizes {sorted({tuple(s) for s in sizes.tolist()})}; "
               f"render one size per call")
    h, w = (int(x) for x in sizes[0])
    return h, w


def check_camera_batch(cameras: Cameras, batch: int | None, what: str) -> int:
    if not isinstance(cameras, Cameras):
        reject(f"{what} cameras must be a manyview Cameras, got {type(cameras).__name__}")
    if cameras.c2w.dim() != 4:
        reject(f"{what} cameras must have shape (B, V), got {tuple(cameras.shape)}")
    if batch is not None and cameras.shape[0] != batch:
        reject(f"{what} cameras are for {cameras.shape[0]} scenes but the images are for {batch}")
    if cameras.shape[1] == 0:
        reject(f"no {what} views given")
    return cameras.shape[1]


def check_input_cameras(images: Tensor, cameras: Cameras, patch_size: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 5:
        reject(f"input images must be a tensor (B, V, 3, H, W), got "
               f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    check_camera_batch(cameras, images.shape[0], "input")
    if tuple(cameras.shape) != tuple(images.shape[:2]):
        reject(f"input cameras {tuple(cameras.shape)} do not match the images' (scenes, views) "
               f"{tuple(images.shape[:2])}")
    h, w = camera_image_size(cameras, "input")
    if (h, w) != tuple(images.shape[-2:]):
        reject(f"input cameras are for {h}x{w} images but the images are {images.shape[-2]}x{images.shape[-1]}")


def target_size(cameras: Cameras, batch: int, patch_size: int) -> tuple[int, int]:
    check_camera_batch(cameras, batch, "target")
    h, w = camera_image_size(cameras, "target")
    check_size(h, w, patch_size, "target")
    return h, w


def chunks(n: int, size: int | None) -> Sequence[slice]:
    if size is not None and size < 1:
        reject(f"target_batch_size must be at least 1, got {size}")
    size = n if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


__all__ = ["camera_image_size", "check_camera_batch", "check_cameras", "check_input_cameras", "check_size",
           "check_views", "chunks", "reject", "target_size"]
