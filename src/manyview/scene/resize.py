"""Resize and crop, once: how an image becomes another image, and what that does to its cameras and pixel maps.

An :class:`ImageTransform` scales a whole image to ``resized_size`` and then takes a crop of it. The image
readers (:mod:`manyview.io.images`) record one per file, so that cameras known for the original files can be moved
onto the loaded images; :func:`resize_views` applies the same plan to ``Views`` already in memory (images,
cameras, depth, masks and normals together), and :func:`resize_cameras` to cameras alone.

The plan (:func:`plan_resize_and_crop`): ``crop="center"`` scales the image, aspect ratio kept, to cover the
target and crops the middle; ``crop="none"`` scales it to the target exactly (aspect ratio not kept; the
intrinsics scale x and y separately, so the cameras stay exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene.cameras import Cameras
from manyview.scene.views import Views

CropMode = Literal["center", "none"]


def plan_resize_and_crop(size: tuple[int, int], target: tuple[int, int],
                         crop: CropMode = "center") -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized (H, W), crop (top, left, H, W)) bringing an image of ``size`` (H, W) to ``target`` (H, W)."""
    h, w = size
    th, tw = target
    if min(h, w, th, tw) < 1:
        raise ManyviewError(f"cannot resize an image of {w} x {h} pixels to {tw} x {th}")
    if crop == "none":
        return (th, tw), (0, 0, th, tw)
    if crop != "center":
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    s = max(th / h, tw / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    return (rh, rw), ((rh - th) // 2, (rw - tw) // 2, th, tw)


@dataclass(frozen=True)
class ImageTransform:
    """How one image's pixels became another image: scale the whole (upright) image, then crop."""

    source: str  # what the image was (a file name), for messages
    original_size: tuple[int, int]  # (H, W) before, e.g. of the file after EXIF orientation
    resized_size: tuple[int, int]  # (H, W) the whole image was resampled to
    crop: tuple[int, int, int, int]  # (top, left, height, width) taken from the resized image

    @classmethod
    def fitting(cls, size: tuple[int, int], target: tuple[int, int], crop: CropMode = "center",
                source: str = "") -> "ImageTransform":
        """The transform bringing an image of ``size`` (H, W) to ``target`` (see :func:`plan_resize_and_crop`)."""
        resized, box = plan_resize_and_crop(size, target, crop)
        return cls(source, (int(size[0]), int(size[1])), resized, box)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]

    def apply(self, cameras: Cameras) -> Cameras:
        """Cameras of the original image -> cameras of the transformed one.

        Cameras whose ``image_size`` differs from the original's (e.g. COLMAP run on full-size photos, images stored
        downsampled) are first rescaled to the original size, provided the aspect ratios agree to 1 %.
        """
        h0, w0 = self.original_size
        size = cameras.image_size.reshape(-1, 2)
        ch, cw = size[:, 0].double(), size[:, 1].double()
        if bool(((ch != h0) | (cw != w0)).any()):
            ratio = (cw / ch) / (w0 / h0)
            if bool(((ratio - 1).abs() > 0.01).any()):
                raise ManyviewError(
                    f"camera image size {size[0].tolist()[::-1]} (W x H) does not match the image's "
                    f"{w0} x {h0}, and the aspect ratios differ", self.source or None)
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
            work = F.interpolate(work, size=self.resized_size, mode=mode)
        top, left, h, w = self.crop
        out = work[..., top:top + h, left:left + w]
        if dtype == torch.bool:
            out = out > 0.5
        elif not dtype.is_floating_point:
            out = out.round().to(dtype)
        return out.reshape(lead + (h, w))

    def apply_images(self, images: Tensor) -> Tensor:
        """Resample images (..., C, h, w) in [0, 1]: bilinear with antialiasing (area-like when shrinking), then crop.

        A pure crop (no scaling) keeps the pixels exactly. Files are resampled while decoding instead
        (:mod:`manyview.io.images`, Lanczos by default); this is the path for images already in memory.
        """
        lead = images.shape[:-3]
        flat = images.reshape((-1,) + tuple(images.shape[-3:])).float()
        if tuple(flat.shape[-2:]) != tuple(self.resized_size):
            flat = F.interpolate(flat, size=self.resized_size, mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1)
        top, left, h, w = self.crop
        return flat[..., top:top + h, left:left + w].reshape(lead + (flat.shape[1], h, w))


def apply_to_cameras(cameras: Cameras, transforms: Sequence[ImageTransform]) -> Cameras:
    """Apply each image's transform to its camera: ``cameras`` (N,) of the original images -> of the new ones."""
    if len(cameras) != len(transforms):
        raise ValueError(f"{len(cameras)} cameras but {len(transforms)} image transforms")
    return Cameras.cat([t.apply(cameras[i:i + 1]) for i, t in enumerate(transforms)])


def resize_cameras(cameras: Cameras, height: int, width: int, crop: CropMode = "center") -> Cameras:
    """Cameras (N,) of their own image sizes -> cameras of those images brought to ``height`` x ``width``
    (:func:`plan_resize_and_crop`), exactly as the image readers and :func:`resize_views` treat the images."""
    sizes = [(int(h), int(w)) for h, w in cameras.image_size.reshape(-1, 2).tolist()]
    if len(set(sizes)) == 1:
        return ImageTransform.fitting(sizes[0], (height, width), crop).apply(cameras)
    return apply_to_cameras(cameras, [ImageTransform.fitting(s, (height, width), crop) for s in sizes])


def resize_views(views: Views, height: int, width: int, crop: CropMode = "center") -> Views:
    """Views brought to ``height`` x ``width``: images resampled (:meth:`ImageTransform.apply_images`), depth, masks
    and normals by nearest sampling, intrinsics moved along (:func:`plan_resize_and_crop` says how).

    Views already of that size are returned as they are.
    """
    if (views.height, views.width) == (height, width):
        return views
    t = ImageTransform.fitting((views.height, views.width), (height, width), crop)

    def nearest(x: Tensor | None) -> Tensor | None:
        return None if x is None else t.apply_map(x).contiguous()

    return Views(images=t.apply_images(views.images).contiguous(),
                 cameras=None if views.cameras is None else t.apply(views.cameras),
                 depths=nearest(views.depths), masks=nearest(views.masks), normals=nearest(views.normals),
                 names=list(views.names))


__all__ = ["CropMode", "ImageTransform", "apply_to_cameras", "plan_resize_and_crop", "resize_cameras",
           "resize_views"]
