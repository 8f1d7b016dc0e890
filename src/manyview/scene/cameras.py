"""Cameras: batched pinhole intrinsics and camera-to-world poses in the OpenCV convention.

Conventions (held everywhere in manyview):
- camera frame: x right, y down, z forward (OpenCV / COLMAP);
- pose: ``c2w`` (..., 4, 4) maps camera coordinates to world coordinates;
- intrinsics: ``fxfycxcy`` (..., 4) in pixels; pixel (u, v) = (0, 0) is the *centre* of the top-left pixel when
  you use ``geometry.rays.pixel_grid(..., offset=0.0)`` and its top-left corner with ``offset=0.5``; the
  intrinsics themselves follow the COLMAP convention where the image spans [0, W] x [0, H];
- ``image_size`` (..., 2) int64 as (height, width).

``Cameras`` is immutable: every method returns a new object, tensors are never edited in place, so a
``Cameras`` can be shared between modules and autograd sees every operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.poses import box_orbit_poses, look_at, orbit_poses
from manyview.geometry.rotation import matrix_to_quaternion, quaternion_to_matrix
from manyview.geometry.transforms import invert_rigid, rigid as _rigid

# Flipping y and z turns an OpenCV camera frame into an OpenGL / Blender / nerfstudio one (x right, y up, z back).
_CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass(frozen=True, eq=False)
class Cameras:
    fxfycxcy: Tensor  # (..., 4) pixels
    c2w: Tensor  # (..., 4, 4) camera-to-world, OpenCV axes
    image_size: Tensor  # (..., 2) int64 (height, width)

    def __post_init__(self):
        batch = self.fxfycxcy.shape[:-1]
        if self.fxfycxcy.shape[-1] != 4:
            raise ValueError(f"fxfycxcy must be (..., 4), got {tuple(self.fxfycxcy.shape)}")
        if self.c2w.shape != batch + (4, 4):
            raise ValueError(f"c2w must be {tuple(batch) + (4, 4)}, got {tuple(self.c2w.shape)}")
        size = torch.as_tensor(self.image_size, dtype=torch.int64, device=self.fxfycxcy.device)
        if size.shape != batch + (2,):
            size = size.expand(batch + (2,))
        object.__setattr__(self, "image_size", size)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_K(cls, K: Tensor, c2w: Tensor, image_size) -> "Cameras":
        """From (..., 3, 3) intrinsic matrices (skew is not supported and must be 0)."""
        fxfycxcy = torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], dim=-1)
        return cls(fxfycxcy, c2w, torch.as_tensor(image_size))

    @classmethod
    def from_w2c(cls, fxfycxcy: Tensor, w2c: Tensor, image_size) -> "Cameras":
        return cls(fxfycxcy, invert_rigid(w2c), torch.as_tensor(image_size))

    @classmethod
    def from_opengl(cls, fxfycxcy: Tensor, c2w_gl: Tensor, image_size) -> "Cameras":
        """From an OpenGL / Blender / nerfstudio camera-to-world (x right, y up, z back)."""
        return cls(fxfycxcy, c2w_gl @ _CV_TO_GL.to(c2w_gl), torch.as_tensor(image_size))

    @classmethod
    def from_colmap(cls, fxfycxcy: Tensor, qvec_wxyz: Tensor, tvec: Tensor, image_size) -> "Cameras":
        """From COLMAP world-to-camera quaternion (w, x, y, z) and translation."""
        R = quaternion_to_matrix(qvec_wxyz)
        return cls.from_w2c(fxfycxcy, _rigid(R, tvec), image_size)

    @classmethod
    def from_normalized(cls, fxfycxcy_normalized: Tensor, c2w: Tensor, image_size) -> "Cameras":
        """From intrinsics divided by image width (fx, cx) and height (fy, cy)."""
        size = torch.as_tensor(image_size, device=fxfycxcy_normalized.device)
        hw = size.to(fxfycxcy_normalized.dtype).expand(fxfycxcy_normalized.shape[:-1] + (2,))
        scale = torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], -1)
        return cls(fxfycxcy_normalized * scale, c2w, size)

    @classmethod
    def look_at(cls, eye: Tensor, target: Tensor, up: Tensor, fxfycxcy: Tensor, image_size) -> "Cameras":
        """Cameras at ``eye`` looking at ``target``; ``up`` is the world direction that appears up in the image."""
        c2w = look_at(eye, target, up)
        return cls(fxfycxcy.expand(c2w.shape[:-2] + (4,)), c2w, torch.as_tensor(image_size))

    @staticmethod
    def cat(cameras: Sequence["Cameras"], dim: int = 0) -> "Cameras":
        if not cameras:
            raise ValueError("Cameras.cat needs at least one Cameras")
        return Cameras(
            torch.cat([c.fxfycxcy for c in cameras], dim),
            torch.cat([c.c2w for c in cameras], dim),
            torch.cat([c.image_size for c in cameras], dim),
        )

    # ----------------------------------------------------------------- views of the data
    @property
    def shape(self) -> torch.Size:
        return self.fxfycxcy.shape[:-1]

    def __len__(self) -> int:
        return self.shape[0] if len(self.shape) else 1

    def __getitem__(self, index) -> "Cameras":
        if not isinstance(index, tuple):
            index = (index,)
        return Cameras(self.fxfycxcy[index + (...,)], self.c2w[index + (..., slice(None), slice(None))],
                       self.image_size[index + (...,)])

    def __iter__(self) -> Iterable["Cameras"]:
        for i in range(len(self)):
            yield self[i]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.c2w.dtype

    def to(self, *args, **kwargs) -> "Cameras":
        """Move / cast like ``Tensor.to``; image sizes stay int64."""
        f, p = self.fxfycxcy.to(*args, **kwargs), self.c2w.to(*args, **kwargs)
        return Cameras(f, p, self.image_size.to(device=p.device))

    def detach(self) -> "Cameras":
        return Cameras(self.fxfycxcy.detach(), self.c2w.detach(), self.image_size)

    @property
    def fx(self) -> Tensor:
        return self.fxfycxcy[..., 0]

    @property
    def fy(self) -> Tensor:
        return self.fxfycxcy[..., 1]

    @property
    def cx(self) -> Tensor:
        return self.fxfycxcy[..., 2]

    @property
    def cy(self) -> Tensor:
        return self.fxfycxcy[..., 3]

    @property
    def height(self) -> Tensor:
        return self.image_size[..., 0]

    @property
    def width(self) -> Tensor:
        return self.image_size[..., 1]

    @property
    def K(self) -> Tensor:
        """(..., 3, 3) intrinsic matrices."""
        fx, fy, cx, cy = self.fxfycxcy.unbind(-1)
        zero, one = torch.zeros_like(fx), torch.ones_like(fx)
        return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).reshape(self.shape + (3, 3))

    @property
    def R(self) -> Tensor:
        """(..., 3, 3) camera-to-world rotation."""
        return self.c2w[..., :3, :3]

    @property
    def centers(self) -> Tensor:
        """(..., 3) camera centres in world coordinates."""
        return self.c2w[..., :3, 3]

    @property
    def w2c(self) -> Tensor:
        return invert_rigid(self.c2w)

    # ----------------------------------------------------------------- conversions out
    def to_opengl(self) -> Tensor:
        """(..., 4, 4) OpenGL / Blender / nerfstudio camera-to-world (x right, y up, z back)."""
        return self.c2w @ _CV_TO_GL.to(self.c2w)

    def to_colmap(self) -> tuple[Tensor, Tensor]:
        """COLMAP world-to-camera (qvec (..., 4) as w, x, y, z with w >= 0, tvec (..., 3))."""
        w2c = self.w2c
        return matrix_to_quaternion(w2c[..., :3, :3]), w2c[..., :3, 3]

    def normalized_intrinsics(self) -> Tensor:
        """(..., 4) fx / W, fy / H, cx / W, cy / H."""
        hw = self.image_size.to(self.fxfycxcy.dtype)
        return self.fxfycxcy / torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], -1)

    # ----------------------------------------------------------------- edits (new objects)
    def with_poses(self, c2w: Tensor) -> "Cameras":
        return Cameras(self.fxfycxcy, c2w, self.image_size)

    def with_intrinsics(self, fxfycxcy: Tensor) -> "Cameras":
        return Cameras(fxfycxcy, self.c2w, self.image_size)

    def transform(self, T: Tensor, scale: float | Tensor = 1.0) -> "Cameras":
        """Apply a world similarity x -> scale * R x + t, where T = [R | t] is (4, 4) or batched."""
        c2w = self.c2w.clone()
        rot = T[..., :3, :3]
        new_R = rot @ c2w[..., :3, :3]
        new_t = (torch.as_tensor(scale, dtype=c2w.dtype) * (rot @ c2w[..., :3, 3:4]))[..., 0] + T[..., :3, 3]
        return self.with_poses(_rigid(new_R, new_t))

    def orbit(self, n: int, *, center: Tensor | None = None, up: Tensor | None = None,
              radius: float | None = None, points: Tensor | None = None) -> "Cameras":
        """``n`` cameras on an orbit that frames what these cameras look at
        (:func:`manyview.geometry.poses.orbit_poses`): around the vertical they share, through the scene centre
        (the point closest to their optical axes when they look at it, the middle of where they stand when they
        look around, as in a room, else the centre of ``points`` (P, 3), such as the scene's Gaussians, when
        given), at their typical distance from it and height above it. ``center``,
        ``up`` and ``radius`` override what is derived.

        Intrinsics match the inputs: the first camera's image size, the median field of view of all of them
        (per axis), the principal point at the image centre."""
        flat = self.c2w.reshape(-1, 4, 4)
        c2w = orbit_poses(flat, n, center=center, up=up, radius=radius, points=points)
        return Cameras(self._orbit_intrinsics().expand(n, 4), c2w, self.image_size.reshape(-1, 2)[0].expand(n, 2))

    def _orbit_intrinsics(self) -> Tensor:
        f = self.fxfycxcy.reshape(-1, 4)
        hw = self.image_size.reshape(-1, 2).to(f.dtype)
        h, w = hw[0, 0], hw[0, 1]
        fx = (f[:, 0] / hw[:, 1]).median() * w  # focal in image widths: the field of view, at the first size
        fy = (f[:, 1] / hw[:, 0]).median() * h
        return torch.stack([fx, fy, w / 2, h / 2])

    @classmethod
    def orbit_around_box(cls, low: Tensor, high: Tensor, n: int, image_size=(512, 512), fov_x_deg: float = 50.0,
                         up: Tensor | None = None, elevation_deg: float = 20.0, fill: float = 0.9,
                         dtype: torch.dtype = torch.float32) -> "Cameras":
        """``n`` cameras of ``image_size`` (height, width) with a horizontal field of view of ``fov_x_deg`` (square
        pixels, centred principal point) on an orbit around the box [low, high] (3,) that keeps all of it in view
        and fills most of the frame (:func:`manyview.geometry.poses.box_orbit_poses`): the orbit of a scene with
        no cameras, such as a Gaussian splat made elsewhere. ``up`` is the world's vertical (default +z)."""
        if not 0.0 < fov_x_deg < 180.0:
            raise ManyviewError(f"the field of view must be strictly between 0 and 180 degrees, got {fov_x_deg}")
        height, width = (int(v) for v in image_size)
        f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
        fxfycxcy = torch.tensor([f, f, width / 2, height / 2], dtype=torch.float64)
        c2w = box_orbit_poses(low, high, n, fxfycxcy, (height, width), up=up, elevation_deg=elevation_deg,
                              fill=fill)
        size = torch.tensor([height, width]).expand(n, 2)
        return cls(fxfycxcy.expand(n, 4).to(dtype), c2w.to(dtype), size)

    def resized(self, height: int, width: int) -> "Cameras":
        """Cameras for images resampled to (height, width) covering the same field of view."""
        hw = self.image_size.to(self.fxfycxcy.dtype)
        sy, sx = height / hw[..., 0], width / hw[..., 1]
        scale = torch.stack([sx, sy, sx, sy], -1)
        size = torch.tensor([height, width], device=self.device).expand(self.image_size.shape)
        return Cameras(self.fxfycxcy * scale, self.c2w, size)

    def cropped(self, top: int, left: int, height: int, width: int) -> "Cameras":
        """Cameras for the crop [top, top + height) x [left, left + width) of the image."""
        shift = torch.tensor([0.0, 0.0, left, top], dtype=self.fxfycxcy.dtype, device=self.device)
        size = torch.tensor([height, width], device=self.device).expand(self.image_size.shape)
        return Cameras(self.fxfycxcy - shift, self.c2w, size)

    def __repr__(self) -> str:
        return f"Cameras(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"
