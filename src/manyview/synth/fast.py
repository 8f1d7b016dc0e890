"""CPU fast path of the synthetic renderer: one fused numba loop per pixel.

It computes exactly what ``render.trace`` + ``render.shade`` (the torch reference) compute, with the same
formulas in float64 instead of float32: intersections (``shapes``), surface frames, textures and sky
(``textures``). tests/synth/test_synth_backends.py holds the two together. Everything is scalar code inside
a ``prange`` over image rows, so no (primitives x rays) temporaries are ever materialised.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from manyview.synth.textures import PATTERNS, _lattice_tables

_INF = np.inf
_jit = dict(nogil=True, cache=True, error_model="numpy")


# ---------------------------------------------------------------------------------------------- textures
@numba.njit(**_jit)
def _hash2(ix, iy, seed, perm, values):
    m = perm.shape[0] - 1
    h = perm[(ix + seed * 7919) & m]
    h = perm[(h + iy) & m]
    return values[(h + seed) & m]


@numba.njit(**_jit)
def _value_noise(u, v, seed, perm, values):
    fu, fv = math.floor(u), math.floor(v)
    iu, iv = np.int64(fu), np.int64(fv)
    su, sv = u - fu, v - fv
    su = su * su * (3 - 2 * su)
    sv = sv * sv * (3 - 2 * sv)
    a = _hash2(iu, iv, seed, perm, values)
    b = _hash2(iu + 1, iv, seed, perm, values)
    c = _hash2(iu, iv + 1, seed, perm, values)
    d = _hash2(iu + 1, iv + 1, seed, perm, values)
    top = a + (b - a) * su
    bottom = c + (d - c) * su
    return top + (bottom - top) * sv


@numba.njit(**_jit)
def _fbm(u, v, seed, octaves, perm, values):
    total, amp, norm = 0.0, 1.0, 0.0
    for k in range(octaves):
        f = float(2**k)
        total += amp * _value_noise(u * f + 17.13 * k, v * f - 31.7 * k, seed + k, perm, values)
        norm += amp
        amp *= 0.5
    return total / norm


@numba.njit(**_jit)
def _smoothstep(e0, e1, x):
    t = min(max((x - e0) / (e1 - e0), 0.0), 1.0)
    return t * t * (3 - 2 * t)


@numba.njit(**_jit)
def _mix(c, i, j, t, out):
    for k in range(3):
        out[k] = c[i, k] + (c[j, k] - c[i, k]) * t


@numba.njit(**_jit)
def _pattern(pattern, u, v, c, seed, perm, values, out):
    """Writes the colour of ``pattern`` at (u, v) into out (3,); c is the (3, 3) palette."""
    if pattern == 0:  # checker
        fu, fv = math.floor(u), math.floor(v)
        parity = (fu + fv) % 2.0
        tint = 0.6 * _hash2(np.int64(fu), np.int64(fv), seed + 5, perm, values)
        for k in range(3):
            a = c[0, k] + (c[1, k] - c[0, k]) * parity
            out[k] = a + (c[2, k] - a) * tint
    elif pattern == 1:  # stripes
        warp = 0.6 * _fbm(0.5 * u, 0.5 * v, seed + 101, 2, perm, values)
        s = _smoothstep(0.3, 0.7, 0.5 + 0.5 * math.sin(2 * math.pi * (u + warp)))
        thin = _smoothstep(0.9, 0.97, 0.5 + 0.5 * math.sin(2 * math.pi * (3 * u + warp)))
        for k in range(3):
            a = c[0, k] + (c[1, k] - c[0, k]) * s
            out[k] = a + (c[2, k] - a) * thin
    elif pattern == 2:  # dots
        fu, fv = math.floor(u), math.floor(v)
        iu, iv = np.int64(fu), np.int64(fv)
        cx = 0.3 + 0.4 * _hash2(iu, iv, seed + 11, perm, values)
        cy = 0.3 + 0.4 * _hash2(iu, iv, seed + 23, perm, values)
        radius = 0.12 + 0.16 * _hash2(iu, iv, seed + 37, perm, values)
        inside = (u - fu - cx) ** 2 + (v - fv - cy) ** 2 < radius**2
        pick = 1 if _hash2(iu, iv, seed + 41, perm, values) < 0.5 else 2
        for k in range(3):
            out[k] = c[pick, k] if inside else c[0, k]
    elif pattern == 3:  # noise
        f = _fbm(u, v, seed + 53, 5, perm, values)
        f = min(max((f - 0.5) * 2.2 + 0.5, 0.0), 1.0)
        if f < 0.5:
            _mix(c, 0, 2, 2 * f, out)
        else:
            _mix(c, 2, 1, 2 * f - 1, out)
    elif pattern == 4:  # gradient
        phase = (2 * math.pi / 97) * (seed % 97)
        ramp = 0.5 + 0.5 * math.sin(0.35 * u + 0.2 * v + phase)
        blotch = _smoothstep(0.45, 0.65, _fbm(u, v, seed + 67, 3, perm, values))
        for k in range(3):
            a = c[0, k] + (c[1, k] - c[0, k]) * ramp
            out[k] = a + (c[2, k] - a) * (0.7 * blotch)
    else:  # bricks
        row = math.floor(2 * v)
        uu = u + 0.5 * (row % 2.0)
        iu = math.floor(uu)
        pick = 1 if _hash2(np.int64(iu), np.int64(row), seed + 71, perm, values) < 0.5 else 2
        mortar = (uu - iu) < 0.06 or (2 * v - row) < 0.12
        for k in range(3):
            out[k] = c[0, k] if mortar else c[pick, k]


@numba.njit(**_jit)
def _albedo(u0, v0, pattern, c, scale, angle, noise, seed, perm, values, out):
    cs, sn = math.cos(angle), math.sin(angle)
    u = (cs * u0 - sn * v0) * scale
    v = (sn * u0 + cs * v0) * scale
    _pattern(pattern, u, v, c, seed, perm, values, out)
    detail = _fbm(4.0 * u, 4.0 * v, seed + 997, 3, perm, values)
    drift = _value_noise(0.25 * u + 5.3, 0.25 * v - 2.1, seed + 499, perm, values)
    gain = (1 + noise * (2 * detail - 1)) * (0.75 + 0.5 * drift)
    for k in range(3):
        out[k] = min(max(out[k] * gain, 0.0), 1.0)


@numba.njit(**_jit)
def _sky(dx, dy, dz, sky, sky_seed, perm, values, out):
    """sky: (10,) horizon rgb, zenith rgb, cloud rgb, cloudiness."""
    norm = math.sqrt(dx * dx + dy * dy + dz * dz)
    elevation = math.asin(min(max(dz / norm, -1.0), 1.0))
    if elevation < 0:
        for k in range(3):
            out[k] = 0.6 * sky[k]
        return
    t = math.sqrt(min(max(elevation / (0.5 * math.pi), 0.0), 1.0))
    clouds = _fbm(math.atan2(dy, dx) * 6.0, elevation * 12.0, sky_seed, 5, perm, values)
    amount = sky[9] * _smoothstep(0.45, 0.75, clouds)
    for k in range(3):
        base = sky[k] + (sky[3 + k] - sky[k]) * t
        out[k] = base + (sky[6 + k] - base) * amount


# ---------------------------------------------------------------------------------------------- geometry
@numba.njit(**_jit)
def _nearest(t0, t1, eps):
    t0 = t0 if t0 > eps else _INF
    t1 = t1 if t1 > eps else _INF
    return min(t0, t1)


@numba.njit(**_jit)
def _intersect(shape, ox, oy, oz, dx, dy, dz, eps):
    if shape == 0:  # box
        tnear, tfar = -_INF, _INF
        for oi, di in ((ox, dx), (oy, dy), (oz, dz)):
            inv = 1.0 / di
            a, b = (-1.0 - oi) * inv, (1.0 - oi) * inv
            tnear = max(tnear, min(a, b))
            tfar = min(tfar, max(a, b))
        t = tnear if tnear > eps else tfar
        return t if (tnear <= tfar and t > eps) else _INF
    if shape == 1:  # sphere
        a = dx * dx + dy * dy + dz * dz
        b = ox * dx + oy * dy + oz * dz
        c = ox * ox + oy * oy + oz * oz - 1.0
        disc = b * b - a * c
        if disc < 0:
            return _INF
        sq = math.sqrt(disc)
        return _nearest((-b - sq) / a, (-b + sq) / a, eps)
    if shape == 2:  # cylinder
        best = _INF
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - 1.0
        disc = b * b - a * c
        if disc >= 0:
            sq = math.sqrt(disc)
            for t in ((-b - sq) / a, (-b + sq) / a):
                if t > eps and abs(oz + t * dz) <= 1.0:
                    best = min(best, t)
        inv = 1.0 / dz
        for cap in (-1.0, 1.0):
            t = (cap - oz) * inv
            x, y = ox + t * dx, oy + t * dy
            if t > eps and x * x + y * y <= 1.0:
                best = min(best, t)
        return best
    # quad
    t = -oz / dz
    x, y = ox + t * dx, oy + t * dy
    return t if (abs(x) <= 1.0 and abs(y) <= 1.0 and t > eps) else _INF


@numba.njit(**_jit)
def _surface(shape, px, py, pz, sx, sy, sz, n, uv):
    """Local normal into n (3,), metric surface coordinates into uv (2,); mirrors shapes.surface_frame."""
    qx, qy, qz = px * sx, py * sy, pz * sz
    if shape == 3:
        n[0], n[1], n[2] = 0.0, 0.0, 1.0
        uv[0], uv[1] = qx, qy
    elif shape == 1:
        nx, ny, nz = px / sx, py / sy, pz / sz
        norm = math.sqrt(nx * nx + ny * ny + nz * nz)
        n[0], n[1], n[2] = nx / norm, ny / norm, nz / norm
        r = (sx + sy + sz) / 3
        uv[0] = math.atan2(py, px) * r
        uv[1] = math.asin(min(max(pz, -1.0), 1.0)) * r
    elif shape == 0:
        g0, g1, g2 = (1.0 - abs(px)) * sx, (1.0 - abs(py)) * sy, (1.0 - abs(pz)) * sz
        if g0 <= g1 and g0 <= g2:
            axis, coord = 0, px
        elif g1 <= g2:
            axis, coord = 1, py
        else:
            axis, coord = 2, pz
        sign = 1.0 if coord >= 0 else -1.0
        n[0], n[1], n[2] = 0.0, 0.0, 0.0
        n[axis] = sign
        face = 2 * axis + (1 if sign > 0 else 0)
        if axis == 0:
            uv[0], uv[1] = qy, qz
        elif axis == 1:
            uv[0], uv[1] = qx, qz
        else:
            uv[0], uv[1] = qx, qy
        uv[0] += 13.7 * face
    else:
        rho = math.sqrt(px * px + py * py)
        sign = 1.0 if pz >= 0 else -1.0
        if (1.0 - abs(pz)) * sz < (1.0 - rho) * sx:
            face = 1 + (1 if sign > 0 else 0)
            n[0], n[1], n[2] = 0.0, 0.0, sign
            uv[0], uv[1] = qx + 13.7 * face, qy + 13.7 * face
        else:
            nx, ny = px / sx, py / sy
            norm = math.sqrt(nx * nx + ny * ny)
            n[0], n[1], n[2] = nx / norm, ny / norm, 0.0
            uv[0], uv[1] = math.atan2(py, px) * sx, qz


@numba.njit(parallel=True, **_jit)
def _render_kernel(K, c2w, height, width, ss, eps, shape, to_canonical, center, rotation, size, bound, pattern,
                   colors, scale, angle, noise, seed, light, ambient, has_sky, sky, sky_seed, perm, values,
                   with_color, rgb, depth, normal, prim):
    """Fills rgb (H, W, 3) (mean of ss x ss samples), depth (H, W), normal (H, W, 3), prim (H, W) (-1: miss)."""
    P = shape.shape[0]
    oc = np.empty((P, 3))  # the camera centre in every canonical frame
    wc = np.empty((P, 3))  # primitive centres relative to the camera, for bounding-sphere culling
    wc2 = np.empty(P)
    for p in range(P):
        for i in range(3):
            acc = 0.0
            for j in range(3):
                acc += to_canonical[p, i, j] * (c2w[j, 3] - center[p, j])
            oc[p, i] = acc
            wc[p, i] = center[p, i] - c2w[i, 3]
        wc2[p] = wc[p, 0] ** 2 + wc[p, 1] ** 2 + wc[p, 2] ** 2
    fx, fy, cx, cy = K[0], K[1], K[2], K[3]
    for row in numba.prange(height):
        n = np.empty(3)
        uv = np.empty(2)
        col = np.empty(3)
        for x in range(width):
            acc_r, acc_g, acc_b = 0.0, 0.0, 0.0
            nsamples = ss * ss if with_color else 0
            # Geometry comes from the pixel centre: the middle sub-sample when ss is odd, else one more ray.
            extra = 1 if (not with_color or ss % 2 == 0) else 0
            centre = nsamples if extra else nsamples // 2
            for s in range(nsamples + extra):
                if s < nsamples:
                    u = x + (s % ss + 0.5) / ss
                    v = row + (s // ss + 0.5) / ss
                else:
                    u, v = x + 0.5, row + 0.5
                xc, yc = (u - cx) / fx, (v - cy) / fy
                dx = c2w[0, 0] * xc + c2w[0, 1] * yc + c2w[0, 2]
                dy = c2w[1, 0] * xc + c2w[1, 1] * yc + c2w[1, 2]
                dz = c2w[2, 0] * xc + c2w[2, 1] * yc + c2w[2, 2]
                best, hit = _INF, -1
                lx, ly, lz = 0.0, 0.0, 0.0
                dd = dx * dx + dy * dy + dz * dz
                for p in range(P):
                    # Skip primitives whose bounding sphere the ray misses or only meets behind the nearest hit.
                    b = wc[p, 0] * dx + wc[p, 1] * dy + wc[p, 2] * dz
                    disc = b * b - dd * (wc2[p] - bound[p] * bound[p])
                    if disc < 0 or (b + math.sqrt(disc)) < 0 or (b - math.sqrt(disc)) > best * dd:
                        continue
                    m = to_canonical[p]
                    ex = m[0, 0] * dx + m[0, 1] * dy + m[0, 2] * dz
                    ey = m[1, 0] * dx + m[1, 1] * dy + m[1, 2] * dz
                    ez = m[2, 0] * dx + m[2, 1] * dy + m[2, 2] * dz
                    t = _intersect(shape[p], oc[p, 0], oc[p, 1], oc[p, 2], ex, ey, ez, eps)
                    if t < best:
                        best, hit = t, p
                        lx, ly, lz = oc[p, 0] + t * ex, oc[p, 1] + t * ey, oc[p, 2] + t * ez
                geometry = s == centre
                if geometry:
                    prim[row, x] = hit
                    depth[row, x] = best if hit >= 0 else 0.0
                if hit >= 0:
                    _surface(shape[hit], lx, ly, lz, size[hit, 0], size[hit, 1], size[hit, 2], n, uv)
                    R = rotation[hit]
                    wx = R[0, 0] * n[0] + R[0, 1] * n[1] + R[0, 2] * n[2]
                    wy = R[1, 0] * n[0] + R[1, 1] * n[1] + R[1, 2] * n[2]
                    wz = R[2, 0] * n[0] + R[2, 1] * n[1] + R[2, 2] * n[2]
                    if wx * dx + wy * dy + wz * dz > 0:
                        wx, wy, wz = -wx, -wy, -wz
                    if geometry:
                        normal[row, x, 0], normal[row, x, 1], normal[row, x, 2] = wx, wy, wz
                    if s >= nsamples:
                        continue
                    _albedo(uv[0], uv[1], pattern[hit], colors[hit], scale[hit], angle[hit], noise[hit], seed[hit],
                            perm, values, col)
                    lam = max(wx * light[0] + wy * light[1] + wz * light[2], 0.0)
                    shade = ambient + (1 - ambient) * lam
                    acc_r += min(max(col[0] * shade, 0.0), 1.0)
                    acc_g += min(max(col[1] * shade, 0.0), 1.0)
                    acc_b += min(max(col[2] * shade, 0.0), 1.0)
                else:
                    if geometry:
                        normal[row, x, 0], normal[row, x, 1], normal[row, x, 2] = 0.0, 0.0, 0.0
                    if s >= nsamples:
                        continue
                    if has_sky:
                        _sky(dx, dy, dz, sky, sky_seed, perm, values, col)
                        acc_r += min(max(col[0], 0.0), 1.0)
                        acc_g += min(max(col[1], 0.0), 1.0)
                        acc_b += min(max(col[2], 0.0), 1.0)
            if with_color:
                inv = 1.0 / nsamples
                rgb[row, x, 0], rgb[row, x, 1], rgb[row, x, 2] = acc_r * inv, acc_g * inv, acc_b * inv


def _bounding_radius(shape: str, size: np.ndarray) -> float:
    """Radius of a sphere around the primitive's centre that contains it, with a margin for rounding."""
    if shape == "sphere":
        r = size[0]
    elif shape == "quad":
        r = np.hypot(size[0], size[1])
    elif shape == "cylinder":
        r = np.hypot(size[0], size[2])
    else:
        r = np.linalg.norm(size)
    return float(r * (1 + 1e-6) + 1e-6)


def scene_arrays(scene) -> dict[str, np.ndarray]:
    """The scene's primitives as float64 / int64 arrays for the kernel (like ``render.pack``)."""
    prims = scene.primitives
    rotation = np.stack([p.pose[:3, :3] for p in prims]).astype(np.float64)
    size = np.stack([p.size for p in prims]).astype(np.float64)
    sky = scene.sky
    return dict(
        shape=np.array([p.code for p in prims], np.int64),
        to_canonical=np.ascontiguousarray(rotation.transpose(0, 2, 1) / size[:, :, None]),
        center=np.stack([p.pose[:3, 3] for p in prims]).astype(np.float64), rotation=rotation, size=size,
        bound=np.array([_bounding_radius(p.shape, s) for p, s in zip(prims, size)]),
        pattern=np.array([PATTERNS.index(p.material.pattern) for p in prims], np.int64),
        colors=np.array([p.material.colors for p in prims], np.float64),
        scale=np.array([p.material.scale for p in prims], np.float64),
        angle=np.array([p.material.angle for p in prims], np.float64),
        noise=np.array([p.material.noise for p in prims], np.float64),
        seed=np.array([p.material.seed for p in prims], np.int64),
        is_object=np.array([p.is_object for p in prims], bool),
        light=np.asarray(scene.light, np.float64),
        sky=np.zeros(10) if sky is None else np.array([*sky.horizon, *sky.zenith, *sky.cloud, sky.cloudiness], float),
    )


def render_view(scene, arrays: dict, fxfycxcy: np.ndarray, c2w: np.ndarray, height: int, width: int,
                supersample: int, eps: float, with_color: bool = True):
    """One view: rgb (H, W, 3) float32 (None without colour), depth (H, W), normal (H, W, 3), prim (H, W) int64."""
    perm, values = _lattice_tables(torch.device("cpu"))
    rgb = np.zeros((height, width, 3), np.float32)
    depth = np.empty((height, width), np.float32)
    normal = np.empty((height, width, 3), np.float32)
    prim = np.empty((height, width), np.int64)
    a = arrays
    _render_kernel(
        np.asarray(fxfycxcy, np.float64), np.asarray(c2w, np.float64), height, width, supersample, eps,
        a["shape"], a["to_canonical"], a["center"], a["rotation"], a["size"], a["bound"], a["pattern"], a["colors"], a["scale"],
        a["angle"], a["noise"], a["seed"], a["light"], float(scene.ambient), scene.sky is not None, a["sky"],
        0 if scene.sky is None else int(scene.sky.seed), perm.numpy(), values.numpy().astype(np.float64),
        with_color, rgb, depth, normal, prim,
    )
    return (rgb if with_color else None), depth, normal, prim
