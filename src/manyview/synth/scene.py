"""Procedural scenes: textured primitives, a light and an optional sky, deterministic from an integer seed.

World frame: z up, metres. Two kinds:

- ``object``: a few boxes, spheres and cylinders resting on a large textured ground quad, under a sky;
  orbit cameras look at them (``trajectories.orbit_cameras``).
- ``room``: the inside of a textured room (floor, walls and ceiling are quads) with furniture along the walls,
  paintings on the walls and sometimes a central table or pillar; cameras walk an ellipse around the middle
  (``trajectories.walkthrough_cameras``), which is kept free of furniture.

Every random choice draws from ``numpy.random.default_rng(seed)``; nothing touches global RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from manyview.synth import shapes
from manyview.synth.textures import PATTERNS

SceneKind = Literal["object", "room"]


@dataclass(frozen=True)
class Material:
    """A procedural texture (see ``textures.albedo``)."""

    pattern: str  # one of textures.PATTERNS
    colors: tuple[tuple[float, float, float], ...]  # three RGB colours in [0, 1]
    scale: float  # pattern cells per metre
    angle: float  # rotation of the pattern in the surface plane, radians
    noise: float  # amplitude of the fine fBm modulation, [0, 1]
    seed: int  # decorrelates the noise of different surfaces

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {PATTERNS}")
        if len(self.colors) != 3:
            raise ValueError("a material needs three colours")


@dataclass(frozen=True, eq=False)
class Primitive:
    """A canonical shape (see ``shapes``) placed by a rigid pose and a size."""

    shape: str  # "box" | "sphere" | "cylinder" | "quad"
    pose: np.ndarray  # (4, 4) float64 local-to-world, rigid
    size: np.ndarray  # (3,) metres: half extents / radius / (radius, radius, half height) / (half w, half h, 1)
    material: Material
    is_object: bool = True  # False for structure (ground, walls): what the "objects" mask leaves out

    def __post_init__(self):
        if self.shape not in shapes.SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {shapes.SHAPES}")

    @property
    def code(self) -> int:
        return shapes.SHAPES.index(self.shape)


@dataclass(frozen=True)
class Sky:
    """Backdrop at infinity seen where no surface is hit: a horizon-to-zenith gradient with fBm clouds."""

    horizon: tuple[float, float, float]
    zenith: tuple[float, float, float]
    cloud: tuple[float, float, float]
    cloudiness: float
    seed: int


@dataclass(frozen=True, eq=False)
class Scene:
    kind: str  # "object" | "room"
    seed: int
    primitives: tuple[Primitive, ...]
    light: np.ndarray  # (3,) unit vector pointing towards the (directional) light
    ambient: float  # share of light that reaches every surface, so that texture dominates shading
    center: np.ndarray  # (3,) centre of the objects' bounding box (what orbits look at) / of the room
    extent: np.ndarray  # (3,) half size of that box: the objects' bounds / the room's interior
    sky: Sky | None = None  # None: rays that hit nothing are black and masked out
    walk_axes: np.ndarray | None = None  # (2,) semi-axes of the furniture-free ellipse walked in a room

    def signed_distance(self, points: Tensor, objects_only: bool = False) -> Tensor:
        """(...,) smallest signed distance from world points (..., 3) to any primitive (negative inside a solid)."""
        best = None
        for prim in self.primitives:
            if objects_only and not prim.is_object:
                continue
            pose = torch.as_tensor(prim.pose, dtype=points.dtype, device=points.device)
            q = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> metric local frame (R^T (x - c))
            d = shapes.signed_distance(prim.code, q, torch.as_tensor(prim.size, dtype=points.dtype,
                                                                       device=points.device))
            best = d if best is None else torch.minimum(best, d)
        if best is None:
            return torch.full(points.shape[:-1], math.inf, dtype=points.dtype, device=points.device)
        return best

    def surface_distance(self, points: Tensor) -> Tensor:
        """(...,) Euclidean distance from world points (..., 3) to the nearest surface of the scene."""
        best = None
        for prim in self.primitives:
            pose = torch.as_tensor(prim.pose, dtype=points.dtype, device=points.device)
            q = (points - pose[:3, 3]) @ pose[:3, :3]
            d = shapes.signed_distance(prim.code, q, torch.as_tensor(prim.size, dtype=points.dtype,
                                                                       device=points.device)).abs()
            best = d if best is None else torch.minimum(best, d)
        return best


@dataclass(frozen=True)
class SceneConfig:
    """Ranges the scene generator draws from (all lengths in metres)."""

    num_objects: tuple[int, int] = (3, 6)  # object scenes: objects on the ground
    object_size: tuple[float, float] = (0.15, 0.45)  # half extent / radius
    spread: float = 1.0  # object scenes: objects stand within this radius of the centre
    ground_extent: float = 8.0  # half size of the ground quad
    sky: bool = True  # object scenes: a sky backdrop (else misses are black)
    room_half_size: tuple[float, float] = (2.4, 4.0)  # rooms: half width and half depth
    room_height: tuple[float, float] = (2.5, 3.2)
    num_furniture: tuple[int, int] = (5, 9)  # rooms: pieces along the walls
    num_paintings: tuple[int, int] = (2, 5)  # rooms: textured quads hung on the walls
    furniture_band: float = 1.0  # rooms: furniture stays within this distance of the walls
    walk_margin: float = 0.4  # rooms: gap between the walked ellipse and the furniture band
    patterns: tuple[str, ...] = PATTERNS


# ---------------------------------------------------------------------------------------------- sampling helpers
def _pose(rotation: np.ndarray, center) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = center
    return T


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _palette(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Dark, bright and middle colours with independent hues: luminance contrast survives greyscale (SIFT)."""
    values = (rng.uniform(0.12, 0.4), rng.uniform(0.7, 0.97), rng.uniform(0.4, 0.7))
    return tuple(_hsv(rng.random(), rng.uniform(0.25, 0.9), v) for v in values)


def _material(rng: np.random.Generator, patterns, scale: tuple[float, float]) -> Material:
    return Material(
        pattern=str(rng.choice(list(patterns))),
        colors=_palette(rng),
        scale=float(rng.uniform(*scale)),
        angle=float(rng.uniform(0, math.pi)),
        noise=float(rng.uniform(0.3, 0.6)),
        seed=int(rng.integers(0, 2**20)),
    )


def _light(rng: np.random.Generator) -> np.ndarray:
    elevation, azimuth = rng.uniform(math.radians(35), math.radians(70)), rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                     math.sin(elevation)])


def _solid(rng: np.random.Generator, xy, material: Material, lo: float, hi: float) -> tuple[Primitive, float]:
    """A box, sphere or cylinder standing on z = 0 at ``xy``; returns it and its footprint radius."""
    kind = rng.choice(["box", "sphere", "cylinder"], p=[0.45, 0.25, 0.3])
    if kind == "box":
        half = rng.uniform(lo, hi, size=3)
        pose = _pose(_rot_z(rng.uniform(0, math.pi)), [xy[0], xy[1], half[2]])
        return Primitive("box", pose, half, material), float(np.hypot(half[0], half[1]))
    if kind == "sphere":
        r = rng.uniform(lo, hi)
        return Primitive("sphere", _pose(np.eye(3), [xy[0], xy[1], r]), np.full(3, r), material), float(r)
    r, h = rng.uniform(lo * 0.7, hi * 0.8), rng.uniform(lo, hi * 1.2)
    if rng.random() < 0.25:  # lying on its side
        rot = _rot_z(rng.uniform(0, math.pi)) @ _rot_x(math.pi / 2)
        prim = Primitive("cylinder", _pose(rot, [xy[0], xy[1], r]), np.array([r, r, h]), material)
        return prim, float(np.hypot(r, h))
    return Primitive("cylinder", _pose(np.eye(3), [xy[0], xy[1], h]), np.array([r, r, h]), material), float(r)


def _quad(center, x_axis, y_axis, half_w: float, half_h: float, material: Material, is_object: bool) -> Primitive:
    x, y = np.asarray(x_axis, float), np.asarray(y_axis, float)
    rot = np.stack([x, y, np.cross(x, y)], axis=1)
    return Primitive("quad", _pose(rot, center), np.array([half_w, half_h, 1.0]), material, is_object)


# ---------------------------------------------------------------------------------------------- scene kinds
def _object_scene(seed: int, rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    prims: list[Primitive] = []
    placed: list[tuple[np.ndarray, float]] = []  # footprint centres and radii
    lo, hi = cfg.object_size
    n = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    for _ in range(200):
        if len(placed) >= n:
            break
        r = cfg.spread * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        xy = np.array([r * math.cos(a), r * math.sin(a)])
        prim, radius = _solid(rng, xy, _material(rng, cfg.patterns, (3.0, 10.0)), lo, hi)
        if any(np.linalg.norm(xy - c) < radius + rc + 0.05 for c, rc in placed):
            continue
        prims.append(prim)
        placed.append((xy, radius))
        if prim.shape == "box" and rng.random() < 0.3:  # a ball resting on top of the box
            top = prim.pose[2, 3] + prim.size[2]
            rs = min(prim.size[0], prim.size[1]) * rng.uniform(0.5, 0.9)
            prims.append(Primitive("sphere", _pose(np.eye(3), [xy[0], xy[1], top + rs]), np.full(3, rs),
                                   _material(rng, cfg.patterns, (3.0, 10.0))))
    ground_patterns = [p for p in cfg.patterns if p in ("checker", "noise", "bricks", "dots")] or list(cfg.patterns)
    ground = Primitive("quad", _pose(_rot_z(rng.uniform(0, math.pi)), [0.0, 0.0, 0.0]),
                       np.array([cfg.ground_extent, cfg.ground_extent, 1.0]),
                       _material(rng, ground_patterns, (1.5, 4.0)), is_object=False)
    if prims:
        pts = np.concatenate([_corners(p) for p in prims])
        lo_b, hi_b = pts.min(0), pts.max(0)
    else:  # an empty ground: frame the area where objects would stand
        lo_b, hi_b = np.array([-cfg.spread, -cfg.spread, 0.0]), np.array([cfg.spread, cfg.spread, 0.5])
    sky = None
    if cfg.sky:
        zenith = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.6, 0.9))
        horizon = _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.05, 0.3), rng.uniform(0.8, 1.0))
        sky = Sky(horizon, zenith, (0.97, 0.97, 0.97), float(rng.uniform(0.4, 0.9)), int(rng.integers(0, 2**20)))
    return Scene(
        kind="object", seed=seed, primitives=(ground, *prims), light=_light(rng),
        ambient=float(rng.uniform(0.4, 0.55)), center=np.array([0.0, 0.0, 0.5 * hi_b[2]]),
        extent=np.maximum(np.abs(lo_b), np.abs(hi_b)) * np.array([1.0, 1.0, 0.5]), sky=sky,
    )


def _corners(prim: Primitive) -> np.ndarray:
    """(8, 3) world corners of the primitive's local bounding box."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    size = prim.size if prim.shape != "quad" else np.array([prim.size[0], prim.size[1], 0.0])
    return (signs * size) @ prim.pose[:3, :3].T + prim.pose[:3, 3]


def _room_scene(seed: int, rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    hx, hy = rng.uniform(*cfg.room_half_size, size=2)
    height = rng.uniform(*cfg.room_height)
    pat = list(cfg.patterns)
    # Structure: quads grown by 1 cm past the edges so that no ray slips through a corner seam.
    pad = 0.01
    floor_mat = _material(rng, [p for p in pat if p in ("checker", "bricks", "noise", "dots")] or pat, (1.5, 4.0))
    ceiling_mat = _material(rng, [p for p in pat if p in ("noise", "gradient", "dots")] or pat, (1.0, 3.0))
    structure = [
        _quad([0, 0, 0], [1, 0, 0], [0, 1, 0], hx + pad, hy + pad, floor_mat, False),
        _quad([0, 0, height], [1, 0, 0], [0, -1, 0], hx + pad, hy + pad, ceiling_mat, False),
    ]
    walls = [  # (centre, inward normal, in-plane horizontal axis, half length)
        (np.array([hx, 0, height / 2]), np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), hy),
        (np.array([-hx, 0, height / 2]), np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), hy),
        (np.array([0, hy, height / 2]), np.array([0, -1.0, 0]), np.array([-1.0, 0, 0]), hx),
        (np.array([0, -hy, height / 2]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0]), hx),
    ]
    for c, _, axis, half in walls:
        structure.append(_quad(c, axis, [0, 0, 1], half + pad, height / 2 + pad,
                               _material(rng, pat, (1.5, 5.0)), False))
    prims: list[Primitive] = []
    band = cfg.furniture_band
    footprints: list[tuple[np.ndarray, float]] = []
    n = int(rng.integers(cfg.num_furniture[0], cfg.num_furniture[1] + 1))
    for _ in range(300):
        if len(footprints) >= n:
            break
        c, inward, axis, half = walls[int(rng.integers(4))]
        depth = rng.uniform(0.15, band / 2 - 0.02)  # half depth of the piece
        s = rng.uniform(-(half - depth - 0.05), half - depth - 0.05)
        xy = (c + inward * (depth + 0.02) + axis * s)[:2]
        prim, radius = _solid(rng, xy, _material(rng, pat, (3.0, 10.0)), 0.15, depth)
        if prim.shape == "box":  # furniture: taller than deep, aligned with the wall
            width, tall = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.9)
            yaw = math.atan2(axis[1], axis[0])
            prim = Primitive("box", _pose(_rot_z(yaw), [xy[0], xy[1], tall]), np.array([width, depth, tall]),
                             prim.material)
            radius = float(np.hypot(width, depth))
        lo_c, hi_c = _corners(prim).min(0), _corners(prim).max(0)
        inside = (np.abs(lo_c[:2]) < [hx, hy]).all() and (np.abs(hi_c[:2]) < [hx, hy]).all() and hi_c[2] < height
        if not inside or any(np.linalg.norm(xy - fc) < radius + fr + 0.05 for fc, fr in footprints):
            continue
        prims.append(prim)
        footprints.append((xy, radius))
    for _ in range(int(rng.integers(cfg.num_paintings[0], cfg.num_paintings[1] + 1))):
        c, inward, axis, half = walls[int(rng.integers(4))]
        w, h = rng.uniform(0.25, min(0.8, half * 0.4)), rng.uniform(0.2, 0.5)
        s = rng.uniform(-(half - w - 0.1), half - w - 0.1)
        z = rng.uniform(max(1.0, h + 0.1), height - h - 0.15)
        centre = c + inward * 0.01 + axis * s
        centre[2] = z
        prims.append(_quad(centre, axis, [0, 0, 1], w, h, _material(rng, ("noise", "dots", "stripes", "gradient"),
                                                                      (6.0, 14.0)), True))
    axes = np.array([hx - band - cfg.walk_margin, hy - band - cfg.walk_margin])
    free = float(axes.min()) - 0.6  # room left in the middle of the walked ellipse
    if free > 0.2 and rng.random() < 0.7:
        if rng.random() < 0.5:  # a table
            half = np.array([rng.uniform(0.2, free / 1.5), rng.uniform(0.2, free / 1.5), rng.uniform(0.3, 0.45)])
            pose = _pose(_rot_z(rng.uniform(0, math.pi)), [0.0, 0.0, half[2]])
            prims.append(Primitive("box", pose, half, _material(rng, pat, (3.0, 10.0))))
        else:  # a pillar from floor to ceiling
            r = rng.uniform(0.15, min(free, 0.5))
            prims.append(Primitive("cylinder", _pose(np.eye(3), [0.0, 0.0, height / 2]),
                                   np.array([r, r, height / 2 - 1e-3]), _material(rng, pat, (3.0, 8.0))))
    return Scene(
        kind="room", seed=seed, primitives=(*structure, *prims), light=_light(rng),
        ambient=float(rng.uniform(0.55, 0.7)), center=np.array([0.0, 0.0, height / 2]),
        extent=np.array([hx, hy, height / 2]),
        sky=None, walk_axes=axes,
    )


def make_scene(seed: int, kind: SceneKind = "object", config: SceneConfig | None = None) -> Scene:
    """A procedural scene, identical for identical (seed, kind, config)."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng([int(seed), 0 if kind == "object" else 1])
    if kind == "object":
        return _object_scene(int(seed), rng, cfg)
    if kind == "room":
        return _room_scene(int(seed), rng, cfg)
    raise ValueError(f"unknown scene kind {kind!r}; expected 'object' or 'room'")
