"""Analytic ray casting of synthetic scenes into ``Views`` with exact depth, normals and masks.

Rays go through pixel centres (+0.5, COLMAP convention) with camera-frame directions of unit z, so the ray
parameter of a hit *is* its z-depth. Output per view:

- images (N, 3, H, W): albedo * (ambient + (1 - ambient) * max(n . light, 0)); the sky where nothing is hit;
- depths (N, H, W): z-depth of the nearest surface, 0 where only the sky is seen (the sky has no depth);
- normals (N, 3, H, W): world unit normals facing the camera (quads are two-sided), 0 where nothing is hit;
- masks (N, H, W): ``"geometry"`` True wherever depth is valid (everything in a closed room),
  ``"objects"`` True only on primitives flagged as objects (not ground, walls, floor or ceiling).

Backends: ``"numba"`` (``synth.fast``, the CPU fast path: one fused loop per pixel, float64) and two torch
casters that run on any device: ``"batched"`` intersects all primitives of one shape at once, ``"loop"`` walks
the primitives one by one with a depth test (the simple reference and the benchmark baseline). ``"auto"``
takes numba on CPU and batched elsewhere (a GPU). All share the formulas of ``shapes`` and ``textures``.
With ``supersample=s`` the RGB is the mean of s x s sub-pixel samples; depth, normals and masks always come
from the pixel centre, so they stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.geometry.rays import pixel_rays
from manyview.scene import Cameras, Views
from manyview.synth import shapes
from manyview.synth.scene import Scene
from manyview.synth.textures import PATTERNS, albedo, sky_color

Backend = Literal["auto", "numba", "batched", "loop"]
MaskMode = Literal["geometry", "objects"]

_EPS = 1e-4  # nearest accepted hit distance (z-depth, metres)
_MAX_RAYS = 1 << 16  # rays cast together; bounds the (primitives, 3, rays) temporaries


@dataclass(frozen=True)
class Packed:
    """A scene's primitives as tensors, one row per primitive."""

    shape: Tensor  # (P,) int64 shape codes
    rotation: Tensor  # (P, 3, 3) local-to-world rotations
    center: Tensor  # (P, 3)
    size: Tensor  # (P, 3)
    to_canonical: Tensor  # (P, 3, 3) world direction -> canonical direction: diag(1 / size) R^T
    is_object: Tensor  # (P,) bool
    pattern: Tensor  # (P,) int64
    colors: Tensor  # (P, 3, 3)
    scale: Tensor  # (P,)
    angle: Tensor  # (P,)
    noise: Tensor  # (P,)
    seed: Tensor  # (P,) int64
    groups: tuple[tuple[int, Tensor], ...]  # (shape code, primitive indices) for each shape present


def pack(scene: Scene, device: torch.device | str = "cpu") -> Packed:
    prims = scene.primitives
    f32 = dict(dtype=torch.float32, device=device)
    t = lambda rows, **kw: torch.tensor(rows, **(kw or f32))  # noqa: E731
    rotation = t([p.pose[:3, :3].tolist() for p in prims])
    size = t([p.size.tolist() for p in prims])
    shape = t([p.code for p in prims], dtype=torch.int64, device=device)
    groups = tuple((code, (shape == code).nonzero()[:, 0]) for code in range(len(shapes.SHAPES))
                   if bool((shape == code).any()))
    return Packed(
        shape=shape, rotation=rotation, center=t([p.pose[:3, 3].tolist() for p in prims]), size=size,
        to_canonical=rotation.transpose(1, 2) / size[:, :, None],
        is_object=t([p.is_object for p in prims], dtype=torch.bool, device=device),
        pattern=t([PATTERNS.index(p.material.pattern) for p in prims], dtype=torch.int64, device=device),
        colors=t([list(map(list, p.material.colors)) for p in prims]),
        scale=t([p.material.scale for p in prims]), angle=t([p.material.angle for p in prims]),
        noise=t([p.material.noise for p in prims]),
        seed=t([p.material.seed for p in prims], dtype=torch.int64, device=device),
        groups=groups,
    )


def _canonical(packed: Packed, origin: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """One camera's origin (3,) and ray directions (R, 3) in every primitive's canonical frame:
    origins (P, 3) and directions (P, 3, R)."""
    o = (packed.to_canonical @ (origin - packed.center)[:, :, None])[:, :, 0]
    d = packed.to_canonical @ dirs.T
    return o, d


def _split(o: Tensor, d: Tensor):
    """Components for shapes.intersect: origins (G, 1) broadcast against directions (G, R)."""
    return (o[:, 0:1], o[:, 1:2], o[:, 2:3]), (d[:, 0], d[:, 1], d[:, 2])


def cast_batched(packed: Packed, origin: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit of rays (R, 3) from ``origin`` (3,): ray parameter t (R,) (inf: miss) and primitive (R,)."""
    o, d = _canonical(packed, origin, dirs)
    t_all = torch.empty(o.shape[0], dirs.shape[0], dtype=dirs.dtype, device=dirs.device)
    for code, idx in packed.groups:
        t_all[idx] = shapes.intersect(code, *_split(o[idx], d[idx]), eps=_EPS)
    t, prim = t_all.min(0)
    return t, prim


def cast_loop(packed: Packed, origin: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Reference: one primitive at a time, keeping the nearest hit (a z-buffer over primitives)."""
    best = torch.full((dirs.shape[0],), math.inf, dtype=dirs.dtype, device=dirs.device)
    prim = torch.zeros(dirs.shape[0], dtype=torch.int64, device=dirs.device)
    for p in range(packed.shape.shape[0]):
        M = packed.to_canonical[p]
        o = M @ (origin - packed.center[p])
        d = dirs @ M.T
        t = shapes.intersect(int(packed.shape[p]), (o[0], o[1], o[2]), (d[:, 0], d[:, 1], d[:, 2]), eps=_EPS)
        closer = t < best
        best = torch.where(closer, t, best)
        prim = torch.where(closer, p, prim)
    return best, prim


_CASTERS = {"batched": cast_batched, "loop": cast_loop}


@dataclass(frozen=True)
class Hits:
    t: Tensor  # (R,) ray parameter = z-depth; inf where nothing is hit
    prim: Tensor  # (R,) primitive index (meaningless where t is inf)
    normal: Tensor  # (R, 3) world normal facing the ray; 0 on misses
    uv: Tensor  # (R, 2) metric surface coordinates

    @property
    def hit(self) -> Tensor:
        return torch.isfinite(self.t)


def trace(packed: Packed, origin: Tensor, dirs: Tensor, backend: Backend = "batched") -> Hits:
    """Cast rays (R, 3) from one ``origin`` (3,) and describe the surfaces they hit."""
    t, prim = _CASTERS[backend](packed, origin, dirs)
    hit = torch.isfinite(t)
    idx = hit.nonzero()[:, 0]
    normal = torch.zeros_like(dirs)
    uv = torch.zeros(dirs.shape[0], 2, dtype=dirs.dtype, device=dirs.device)
    if idx.numel():
        p, th, dh = prim[idx], t[idx], dirs[idx]
        M = packed.to_canonical[p]
        # Canonical hit point: the same affine map as the intersection, applied to o + t d.
        local = (M @ (origin - packed.center[p] + th[:, None] * dh)[:, :, None])[:, :, 0]
        n_local = torch.empty_like(local)
        uv_h = torch.empty(idx.numel(), 2, dtype=dirs.dtype, device=dirs.device)
        for code, _ in packed.groups:
            sel = (packed.shape[p] == code).nonzero()[:, 0]
            if sel.numel():
                n_local[sel], uv_h[sel], _face = shapes.surface_frame(code, local[sel], packed.size[p[sel]])
        n = (packed.rotation[p] @ n_local[:, :, None])[:, :, 0]
        n = torch.where(((n * dh).sum(-1) > 0)[:, None], -n, n)  # face the camera
        normal[idx], uv[idx] = n, uv_h
    return Hits(t=t, prim=prim, normal=normal, uv=uv)


def shade(scene: Scene, packed: Packed, hits: Hits, dirs: Tensor) -> Tensor:
    """(R, 3) colour in [0, 1]: Lambertian with an ambient term on surfaces, the sky (or black) elsewhere."""
    rgb = torch.zeros_like(dirs)
    idx = hits.hit.nonzero()[:, 0]
    if idx.numel():
        p = hits.prim[idx]
        base = albedo(hits.uv[idx], packed.pattern[p], packed.colors[p], packed.scale[p], packed.angle[p],
                      packed.noise[p], packed.seed[p])
        light = torch.as_tensor(scene.light, dtype=dirs.dtype, device=dirs.device)
        lambert = (hits.normal[idx] @ light).clamp(min=0)
        rgb[idx] = base * (scene.ambient + (1 - scene.ambient) * lambert)[:, None]
    miss = (~hits.hit).nonzero()[:, 0]
    if scene.sky is not None and miss.numel():
        sky = scene.sky
        c = lambda x: torch.tensor(x, dtype=dirs.dtype, device=dirs.device)  # noqa: E731
        rgb[miss] = sky_color(dirs[miss], c(sky.horizon), c(sky.zenith), c(sky.cloud), sky.cloudiness, sky.seed)
    return rgb.clamp(0, 1)


def _render_one(scene: Scene, packed: Packed, fxfycxcy: Tensor, c2w: Tensor, height: int, width: int,
                backend: Backend, with_color: bool) -> tuple[Tensor | None, Hits]:
    origins, dirs = pixel_rays(fxfycxcy, c2w, height, width, offset=0.5, normalize=False)
    origin, dirs = origins[0, 0], dirs.reshape(-1, 3)
    parts, colors = [], []
    for start in range(0, dirs.shape[0], _MAX_RAYS):
        d = dirs[start:start + _MAX_RAYS]
        hits = trace(packed, origin, d, backend)
        parts.append(hits)
        if with_color:
            colors.append(shade(scene, packed, hits, d))
    hits = Hits(*(torch.cat([getattr(h, f) for h in parts]) for f in ("t", "prim", "normal", "uv")))
    rgb = torch.cat(colors).reshape(height, width, 3).permute(2, 0, 1) if with_color else None
    return rgb, hits


def render(
    scene: Scene, cameras: Cameras, *, supersample: int = 1, mask: MaskMode = "geometry", noise_std: float = 0.0,
    seed: int = 0, backend: Backend = "auto", device: torch.device | str | None = None,
) -> Views:
    """Render ``scene`` from ``cameras`` (N,) (all of one image size) into Views with exact ground truth.

    ``supersample`` s averages s x s samples per pixel for the RGB only; ``noise_std`` > 0 adds Gaussian
    pixel noise drawn from a generator seeded with ``seed``. Rendering runs on ``device`` (default: the
    cameras' device) and the Views live there. ``backend="auto"`` takes the numba kernel on CPU and the
    batched torch caster elsewhere.
    """
    if cameras.fxfycxcy.dim() != 2:
        raise ValueError(f"render needs a 1-D batch of cameras, got shape {tuple(cameras.shape)}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if mask not in ("geometry", "objects"):
        raise ValueError(f"unknown mask mode {mask!r}; expected 'geometry' or 'objects'")
    size = cameras.image_size
    height, width = int(size[0, 0]), int(size[0, 1])
    if not bool((size == size[0]).all()):
        raise ValueError(f"all cameras must share one image size, got {size.unique(dim=0).tolist()}")
    device = torch.device(device) if device is not None else cameras.device
    if backend == "auto":
        backend = "numba" if device.type == "cpu" else "batched"
    if backend not in ("numba", *_CASTERS):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'numba' or one of {tuple(_CASTERS)}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba backend renders on the CPU only")
    if backend == "numba":
        images, depths, normals, prims = _render_numba(scene, cameras, height, width, supersample)
    else:
        images, depths, normals, prims = _render_torch(scene, cameras.to(device=device), height, width,
                                                       supersample, backend)
    is_object = torch.tensor([p.is_object for p in scene.primitives], device=device)
    hit = prims >= 0
    masks = hit if mask == "geometry" else hit & is_object[prims.clamp(min=0)]
    if noise_std > 0:
        g = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(images.shape, generator=g, device=device, dtype=images.dtype)
        images = (images + noise_std * noise).clamp(0, 1)
    return Views(images=images, cameras=cameras.to(device=device), depths=depths, masks=masks, normals=normals)


def _render_torch(scene: Scene, cameras: Cameras, height: int, width: int, supersample: int,
                  backend: Backend) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """images (N, 3, H, W), depths (N, H, W), normals (N, 3, H, W), primitive ids (N, H, W) (-1: miss)."""
    device = cameras.device
    cams = cameras.to(dtype=torch.float32)
    packed = pack(scene, device)
    fine = cams.resized(height * supersample, width * supersample) if supersample > 1 else cams
    images, depths, normals, prims = [], [], [], []
    for i in range(len(cams)):
        rgb, hits = _render_one(scene, packed, fine.fxfycxcy[i], fine.c2w[i], height * supersample,
                                width * supersample, backend, with_color=True)
        if supersample > 1:
            rgb = F.avg_pool2d(rgb[None], supersample)[0]
            _, hits = _render_one(scene, packed, cams.fxfycxcy[i], cams.c2w[i], height, width, backend,
                                  with_color=False)
        hit = hits.hit
        images.append(rgb)
        depths.append(torch.where(hit, hits.t, 0.0).reshape(height, width))
        normals.append(hits.normal.T.reshape(3, height, width))
        prims.append(torch.where(hit, hits.prim, -1).reshape(height, width))
    return torch.stack(images), torch.stack(depths), torch.stack(normals), torch.stack(prims)


def _render_numba(scene: Scene, cameras: Cameras, height: int, width: int,
                  supersample: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from manyview.synth import fast  # numba compiles (or loads its cache) on first use only

    arrays = fast.scene_arrays(scene)
    K = cameras.fxfycxcy.detach().double().cpu().numpy()
    c2w = cameras.c2w.detach().double().cpu().numpy()
    out = [fast.render_view(scene, arrays, K[i], c2w[i], height, width, supersample, _EPS) for i in range(len(K))]
    rgb, depth, normal, prim = (torch.from_numpy(np.stack(x)) for x in zip(*out))
    return rgb.permute(0, 3, 1, 2).contiguous(), depth, normal.permute(0, 3, 1, 2).contiguous(), prim
