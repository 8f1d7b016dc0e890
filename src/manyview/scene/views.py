"""Views: a set of images with their cameras and optional per-pixel ground truth.

Images are float tensors in [0, 1], layout (N, 3, H, W), all views the same size (readers resize and crop
mixed inputs, recording the change in the intrinsics). Depth is z-depth along the optical axis (N, H, W), 0 where
unknown; masks are boolean (N, H, W); normals are world-space unit vectors (N, 3, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud


@dataclass(frozen=True, eq=False)
class Views:
    images: Tensor  # (N, 3, H, W) float in [0, 1]
    cameras: Cameras | None = None  # (N,)
    depths: Tensor | None = None  # (N, H, W) z-depth, 0 = unknown
    masks: Tensor | None = None  # (N, H, W) bool, True = valid / foreground
    normals: Tensor | None = None  # (N, 3, H, W) world-space unit normals
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        n, _, h, w = self.images.shape
        if self.cameras is not None and tuple(self.cameras.shape) != (n,):
            raise ValueError(f"{n} images but cameras of shape {tuple(self.cameras.shape)}")
        if self.cameras is not None:
            size = self.cameras.image_size
            if not bool((size[:, 0] == h).all() and (size[:, 1] == w).all()):
                raise ValueError(f"camera image sizes {size.tolist()} differ from the images' {h}x{w}")
        for name, t, shape in (("depths", self.depths, (n, h, w)), ("masks", self.masks, (n, h, w)),
                               ("normals", self.normals, (n, 3, h, w))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
        if not self.names:
            object.__setattr__(self, "names", [f"{i:05d}.png" for i in range(n)])
        elif len(self.names) != n:
            raise ValueError(f"{n} images but {len(self.names)} names")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[2]

    @property
    def width(self) -> int:
        return self.images.shape[3]

    def __getitem__(self, index) -> "Views":
        """Select views by int, slice, list or tensor of indices (always returns a Views)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.arange(len(self))[index]
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Views(
            images=self.images[idx],
            cameras=None if self.cameras is None else self.cameras[idx],
            depths=pick(self.depths), masks=pick(self.masks), normals=pick(self.normals),
            names=[self.names[i] for i in idx.tolist()],
        )

    def to(self, *args, **kwargs) -> "Views":
        move = lambda t: None if t is None else t.to(*args, **kwargs)  # noqa: E731
        device_only = lambda t: None if t is None else t.to(device=move(self.images).device)  # noqa: E731
        return replace(
            self, images=move(self.images), depths=move(self.depths), normals=move(self.normals),
            masks=device_only(self.masks), cameras=None if self.cameras is None else self.cameras.to(*args, **kwargs),
        )

    def with_cameras(self, cameras: Cameras) -> "Views":
        return replace(self, cameras=cameras)

    def point_cloud(self, max_points: int | None = 200_000, seed: int = 0) -> PointCloud:
        """Fuse the depth maps into one coloured world-space cloud (every pixel with depth > 0)."""
        if self.depths is None or self.cameras is None:
            raise ValueError("a point cloud needs depths and cameras")
        from manyview.geometry.projection import depth_to_pointmap

        pts = depth_to_pointmap(self.depths, self.cameras.fxfycxcy, self.cameras.c2w)  # (N, H, W, 3)
        valid = self.depths > 0
        cloud = PointCloud(pts[valid], self.images.permute(0, 2, 3, 1)[valid])
        return cloud if max_points is None else cloud.subsample(max_points, seed)
