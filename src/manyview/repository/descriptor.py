"""What the repository stores of a scene and of a query photo: global descriptors and decorated key points.

All vectors come from one frozen 2D teacher (:mod:`manyview.features.teachers`, EfficientNet-Lite0 by default) at
its full width, never PCA-reduced per scene, so that descriptors of different scenes live in one space:

- a **view descriptor** per image: the mean of the teacher's unit per-cell features, unit length (what a query
  photo is compared with: a photo of a scene looks like some of its views);
- a **scene descriptor**: the mean of the view descriptors, unit length (what duplicates and text queries compare;
  the mean over views makes it depend on what the scene shows rather than on any one camera);
- **decorated key points**: the 2D features lifted onto the scene's points (:func:`~manyview.features.lift.
  lift_features`), then at most K salient points with their descriptors (:func:`~manyview.features.keypoints.
  keypoints3d`; K = :data:`REPOSITORY_KEYPOINTS` by default, more than the features' 256, since the pose of a
  photo is only as good as the matches it finds among them);
- a query photo's 2D side: every cell of its feature map, at the cell centre, with its unit feature (dense: a
  photo's salient cells and a scene's salient points are picked independently, and a photo seen from a new angle
  keeps too few of the same places; every cell keeps them all, and mutual nearest neighbours still weed out the
  ambiguous ones). Measured on held-out synthetic scenes (bench/README.md), dense cells against 1024 key points
  located twice as many photos within 5 degrees / 5 % as 512 salient 2D key points against 256 3D ones.

Images are first resized so that their longer side is ``image_size`` pixels (cameras moved with them), which keeps
indexing and queries fast and makes descriptors of photos of any resolution comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.features.keypoints import cell_centres, keypoints3d
from manyview.features.lift import lift_features

DEFAULT_IMAGE_SIZE = 256  # longer side, pixels, of the images the teacher sees
MAX_LIFT_POINTS = 20_000  # points whose features are lifted (a random subset of larger clouds, seeded)
THUMBNAIL_SIZE = 128
REPOSITORY_KEYPOINTS = 1024  # decorated 3D key points stored per scene


@dataclass
class SceneDescriptor:
    """Everything the repository stores of one scene, as float32 numpy arrays."""

    scene: np.ndarray  # (C,) unit scene descriptor
    views: np.ndarray  # (V, C) unit view descriptors
    keypoints: np.ndarray  # (K, 3) world positions of the decorated key points
    keypoint_descriptors: np.ndarray  # (K, C) unit
    scale: float  # the scene's size: diagonal of the 2-98 % box of its points (pose errors are relative to it)
    thumbnail: bytes  # PNG of the first view, longer side THUMBNAIL_SIZE


@dataclass
class PhotoDescriptor:
    """A query photo: its global descriptor, its 2D key points and the size they are measured in."""

    global_descriptor: np.ndarray  # (C,) unit
    xy: np.ndarray  # (K, 2) cell centres, pixels of the resized image, COLMAP convention
    descriptors: np.ndarray  # (K, C) unit
    image_size: tuple[int, int]  # (H, W) of the resized image
    scale_to_original: float  # original pixels per resized pixel
    cell_px: float  # spacing of the cells, pixels of the resized image


def target_size(height: int, width: int, longer: int) -> tuple[int, int]:
    """(H, W) with the longer side ``longer`` and the aspect ratio kept (never upsampled)."""
    s = min(1.0, longer / max(height, width))
    return max(1, round(height * s)), max(1, round(width * s))


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == size:
        return images.float()
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


def global_descriptor(feature_map: Tensor) -> Tensor:
    """(C,) unit mean of the unit per-cell features of a map (C, h, w)."""
    cells = F.normalize(feature_map.float().flatten(1), dim=0)
    return F.normalize(cells.mean(1), dim=0)


def feature_maps(teacher, images: Tensor) -> list[Tensor]:
    """The teacher's (C, h, w) map of each image (N, 3, H, W), one at a time (bounded memory)."""
    with torch.no_grad():
        return [teacher(images[i:i + 1])[0].float() for i in range(images.shape[0])]


def thumbnail_png(image: Tensor, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes of one image (3, H, W) in [0, 1], longer side ``size``."""
    import io

    from PIL import Image

    small = _resize(image[None], target_size(*image.shape[-2:], size))[0]
    array = (small.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene_scale(points: Tensor) -> float:
    """Diagonal of the 2-98 % percentile box of the points: the size of the scene, robust to stray points."""
    p = points.double()
    if p.shape[0] > 100_000:
        p = p[torch.randperm(p.shape[0], generator=torch.Generator().manual_seed(0))[:100_000]]
    lo, hi = torch.quantile(p, 0.02, dim=0), torch.quantile(p, 0.98, dim=0)
    return float((hi - lo).norm())


def view_descriptors(teacher, images: Tensor, image_size: int = DEFAULT_IMAGE_SIZE
                     ) -> tuple[list[Tensor], Tensor, tuple[int, int]]:
    """(the teacher's maps, unit view descriptors (V, C), the (h, w) the images were resized to) of images
    (V, 3, H, W)."""
    h, w = target_size(*images.shape[-2:], image_size)
    maps = feature_maps(teacher, _resize(images, (h, w)))
    return maps, torch.stack([global_descriptor(m) for m in maps]), (h, w)


def scene_vector(views: Tensor) -> Tensor:
    """The scene descriptor: the unit mean of its unit view descriptors (V, C)."""
    return F.normalize(views.float().mean(0), dim=0)


def describe_scene(teacher, images: Tensor, fxfycxcy: Tensor, c2w: Tensor, points: Tensor,
                   depths: Tensor | None = None, *, max_keypoints: int = REPOSITORY_KEYPOINTS,
                   image_size: int = DEFAULT_IMAGE_SIZE) -> SceneDescriptor:
    """The :class:`SceneDescriptor` of a posed scene: images (V, 3, H, W) in [0, 1], cameras fxfycxcy (V, 4) and
    c2w (V, 4, 4) for those images, points (P, 3) in the same world frame, optional depths (V, H, W)."""
    H, W = images.shape[-2:]
    maps, views, (h, w) = view_descriptors(teacher, images, image_size)
    K = fxfycxcy.float() * torch.tensor([w / W, h / H, w / W, h / H])
    if depths is not None and (h, w) != (H, W):
        depths = F.interpolate(depths[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    pts = points.float()
    if pts.shape[0] > MAX_LIFT_POINTS:
        pts = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_LIFT_POINTS]]
    feats, seen = lift_features(pts, maps, K, c2w.float(), (h, w), depths)
    pts, feats = pts[seen > 0], feats[seen > 0]
    kp = keypoints3d(pts, feats, max_keypoints)
    return SceneDescriptor(
        scene=scene_vector(views).numpy(),
        views=views.numpy(),
        keypoints=kp.positions.float().numpy(),
        keypoint_descriptors=kp.descriptors.float().numpy(),
        scale=scene_scale(points),
        thumbnail=thumbnail_png(images[0]),
    )


def describe_photo(teacher, image: Tensor, *, image_size: int = DEFAULT_IMAGE_SIZE) -> PhotoDescriptor:
    """The :class:`PhotoDescriptor` of one image (3, H, W) in [0, 1]: its global descriptor and every cell of its
    feature map (centre, unit feature)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one image (3, H, W), got {tuple(image.shape)}")
    H, W = image.shape[-2:]
    h, w = target_size(H, W, image_size)
    fmap = feature_maps(teacher, _resize(image[None], (h, w)))[0]
    xy = cell_centres(tuple(fmap.shape[-2:]), (h, w))
    cells = F.normalize(fmap.flatten(1).T, dim=-1)
    return PhotoDescriptor(global_descriptor(fmap).numpy(), xy.numpy(), cells.numpy(), (h, w), W / w,
                           max(h / fmap.shape[-2], w / fmap.shape[-1]))


__all__ = ["DEFAULT_IMAGE_SIZE", "PhotoDescriptor", "REPOSITORY_KEYPOINTS", "SceneDescriptor", "describe_photo",
           "describe_scene", "feature_maps", "global_descriptor", "scene_scale", "scene_vector", "target_size",
           "thumbnail_png", "view_descriptors"]
