"""Procedural textures: albedo from metric surface coordinates, and the sky seen where no surface is hit.

Textures are functions of (u, v) in metres on each surface, so a texel has the same world size in every view:
what a feature detector finds in one view is found again in the next. Every pattern mixes a three-colour palette
and is modulated by fine value-noise fBm, which breaks the periodicity of checkers and stripes (periodic
texture alone gives ambiguous matches).

All functions are vectorised over M points: ``uv`` (M, 2), per-point parameters (M, ...); float32 in, float32 out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PATTERNS = ("checker", "stripes", "dots", "noise", "gradient", "bricks")

_TABLE = 1024  # lattice period of the value noise, in cells
_tables: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _lattice_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """A fixed permutation and fixed lattice values, so that textures never depend on global RNG state."""
    if device not in _tables:
        rng = np.random.default_rng(0x5EED)
        perm = torch.from_numpy(rng.permutation(_TABLE)).to(device)
        values = torch.from_numpy(rng.random(_TABLE, dtype=np.float32)).to(device)
        _tables[device] = (perm, values)
    return _tables[device]


def hash2(ix: Tensor, iy: Tensor, seed: Tensor | int) -> Tensor:
    """Pseudo-random value in [0, 1) for integer lattice cells (int64 tensors)."""
    perm, values = _lattice_tables(ix.device)
    m = _TABLE - 1
    h = perm[(ix + seed * 7919) & m]
    h = perm[(h + iy) & m]
    return values[(h + seed) & m]


def value_noise(u: Tensor, v: Tensor, seed: Tensor | int) -> Tensor:
    """Smooth value noise in [0, 1): lattice values at integer (u, v), smoothstep-interpolated."""
    fu, fv = torch.floor(u), torch.floor(v)
    iu, iv = fu.long(), fv.long()
    su, sv = u - fu, v - fv
    su = su * su * (3 - 2 * su)
    sv = sv * sv * (3 - 2 * sv)
    a = hash2(iu, iv, seed)
    b = hash2(iu + 1, iv, seed)
    c = hash2(iu, iv + 1, seed)
    d = hash2(iu + 1, iv + 1, seed)
    top = a + (b - a) * su
    bottom = c + (d - c) * su
    return top + (bottom - top) * sv


def fbm(u: Tensor, v: Tensor, seed: Tensor | int, octaves: int = 4) -> Tensor:
    """Fractal sum of value noise, normalised to [0, 1); each octave doubles the frequency."""
    total, amp, norm = torch.zeros_like(u), 1.0, 0.0
    for k in range(octaves):
        f = float(2**k)
        # Each octave is shifted so that lattice points of different octaves do not line up.
        total = total + amp * value_noise(u * f + 17.13 * k, v * f - 31.7 * k, seed + k)
        norm += amp
        amp *= 0.5
    return total / norm


def _lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    return a + (b - a) * t[:, None]


def _smoothstep(e0: float, e1: float, x: Tensor) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def pattern_color(pattern: str, u: Tensor, v: Tensor, colors: Tensor, seed: Tensor) -> Tensor:
    """(M, 3) colour of one pattern at pattern-space coordinates (one cell per unit); ``colors`` (M, 3, 3)."""
    c0, c1, c2 = colors[:, 0], colors[:, 1], colors[:, 2]
    if pattern == "checker":
        fu, fv = torch.floor(u), torch.floor(v)
        parity = (fu + fv).remainder(2)
        tint = 0.6 * hash2(fu.long(), fv.long(), seed + 5)  # every cell its own shade: corners differ
        return _lerp(_lerp(c0, c1, parity), c2, tint)
    if pattern == "stripes":
        warp = 0.6 * fbm(0.5 * u, 0.5 * v, seed + 101, octaves=2)
        s = _smoothstep(0.3, 0.7, 0.5 + 0.5 * torch.sin(2 * math.pi * (u + warp)))
        thin = _smoothstep(0.9, 0.97, 0.5 + 0.5 * torch.sin(2 * math.pi * (3 * u + warp)))
        return _lerp(_lerp(c0, c1, s), c2, thin)
    if pattern == "dots":
        iu, iv = torch.floor(u).long(), torch.floor(v).long()
        cx = 0.3 + 0.4 * hash2(iu, iv, seed + 11)
        cy = 0.3 + 0.4 * hash2(iu, iv, seed + 23)
        radius = 0.12 + 0.16 * hash2(iu, iv, seed + 37)
        inside = ((u - iu - cx) ** 2 + (v - iv - cy) ** 2) < radius**2
        dot_color = torch.where((hash2(iu, iv, seed + 41) < 0.5)[:, None], c1, c2)
        return torch.where(inside[:, None], dot_color, c0)
    if pattern == "noise":
        f = fbm(u, v, seed + 53, octaves=5)
        f = ((f - 0.5) * 2.2 + 0.5).clamp(0, 1)  # stretch fBm, whose values cluster around 0.5
        return torch.where((f < 0.5)[:, None], _lerp(c0, c2, 2 * f), _lerp(c2, c1, 2 * f - 1))
    if pattern == "gradient":
        phase = (2 * math.pi / 97) * seed.remainder(97).to(u.dtype)
        ramp = 0.5 + 0.5 * torch.sin(0.35 * u + 0.2 * v + phase)
        blotch = _smoothstep(0.45, 0.65, fbm(u, v, seed + 67, octaves=3))
        return _lerp(_lerp(c0, c1, ramp), c2, 0.7 * blotch)
    if pattern == "bricks":
        row = torch.floor(2 * v)
        uu = u + 0.5 * row.remainder(2)
        iu = torch.floor(uu)
        pick = hash2(iu.long(), row.long(), seed + 71)
        brick = torch.where((pick < 0.5)[:, None], c1, c2)
        mortar = ((uu - iu) < 0.06) | ((2 * v - row) < 0.12)
        return torch.where(mortar[:, None], c0, brick)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def albedo(
    uv: Tensor, pattern: Tensor, colors: Tensor, scale: Tensor, angle: Tensor, noise: Tensor, seed: Tensor
) -> Tensor:
    """(M, 3) albedo in [0, 1] at metric surface coordinates ``uv`` (M, 2).

    Per point: ``pattern`` (M,) index into PATTERNS, ``colors`` (M, 3, 3) palette, ``scale`` (M,) pattern cells
    per metre, ``angle`` (M,) pattern rotation, ``noise`` (M,) amplitude of the fine modulation, ``seed`` (M,) int64.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = (cos * uv[:, 0] - sin * uv[:, 1]) * scale
    v = (sin * uv[:, 0] + cos * uv[:, 1]) * scale
    out = torch.empty(uv.shape[0], 3, dtype=uv.dtype, device=uv.device)
    for k, name in enumerate(PATTERNS):
        idx = (pattern == k).nonzero()[:, 0]
        if idx.numel():
            out[idx] = pattern_color(name, u[idx], v[idx], colors[idx], seed[idx])
    detail = fbm(4.0 * u, 4.0 * v, seed + 997, octaves=3)
    # Slow brightness drift over several cells: repeated cells (checkers, dots, bricks) look different.
    drift = value_noise(0.25 * u + 5.3, 0.25 * v - 2.1, seed + 499)
    gain = (1 + noise * (2 * detail - 1)) * (0.75 + 0.5 * drift)
    return (out * gain[:, None]).clamp(0, 1)


def sky_color(dirs: Tensor, horizon: Tensor, zenith: Tensor, cloud: Tensor, cloudiness: float, seed: int) -> Tensor:
    """(M, 3) sky colour for world ray directions (M, 3), z up: a vertical gradient with fBm clouds.

    The sky depends on the direction only (it is infinitely far away), so it is consistent across views.
    """
    d = torch.nn.functional.normalize(dirs, dim=-1)
    elevation = torch.asin(d[:, 2].clamp(-1, 1))
    t = (elevation / (0.5 * math.pi)).clamp(0, 1).sqrt()
    base = horizon + (zenith - horizon) * t[:, None]
    azimuth = torch.atan2(d[:, 1], d[:, 0])
    clouds = fbm(azimuth * 6.0, elevation * 12.0, seed, octaves=5)
    amount = cloudiness * _smoothstep(0.45, 0.75, clouds)
    sky = base + (cloud - base) * amount[:, None]
    below = elevation < 0  # under the horizon and beyond the ground: a dim haze
    return torch.where(below[:, None], 0.6 * horizon.expand_as(sky), sky)
