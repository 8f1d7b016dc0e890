"""numba kernels of the CPU splatting backend: projection, SH shading and rasterisation (each with its
backward), depth sort and tile binning.

Layout follows gsplat: per camera-Gaussian pairs are flattened to ``cg = c * P + g``; a tile's id is
``c * n_tiles + ty * tiles_x + tx``; ``tile_offsets[t]:tile_offsets[t + 1]`` indexes the depth-ordered ``cg``
ids in ``flat_ids``. Parameters are float32. Projection, shading and binning compute in float64; the
rasteriser, where nearly all the time goes, in float32 (16 SIMD lanes where float64 has 8; its error against
the float64 reference stays ~1e-6, see docs/splatting.md). Semantics are those of ``manyview.splat.types``;
``_reference.py`` is the executable definition.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from manyview.splat.types import (  # numba: constants
    ALPHA_MAX,
    ALPHA_MIN,
    EXTENT_SIGMA,
    FOV_CLAMP,
    T_MIN,
)

FOV_MARGIN = FOV_CLAMP - 1.0
N_GRAD = 6  # per-intersection gradient row: d means2d (2), d conic (3), d opacity (1), then the features

# error_model="numpy": float division without Python's zero check, which would block vectorisation
_JIT = dict(parallel=True, fastmath=False, cache=True, nogil=True, error_model="numpy")
_JIT1 = dict(fastmath=False, cache=True, nogil=True, error_model="numpy")


# ------------------------------------------------------------------------------------------------ projection
# 3x3 matrices are row-major 9-tuples: numba keeps them in registers (no heap allocation per Gaussian).
@njit(**_JIT1)
def _mm(A, B):
    """A @ B"""
    return (A[0] * B[0] + A[1] * B[3] + A[2] * B[6], A[0] * B[1] + A[1] * B[4] + A[2] * B[7],
            A[0] * B[2] + A[1] * B[5] + A[2] * B[8],
            A[3] * B[0] + A[4] * B[3] + A[5] * B[6], A[3] * B[1] + A[4] * B[4] + A[5] * B[7],
            A[3] * B[2] + A[4] * B[5] + A[5] * B[8],
            A[6] * B[0] + A[7] * B[3] + A[8] * B[6], A[6] * B[1] + A[7] * B[4] + A[8] * B[7],
            A[6] * B[2] + A[7] * B[5] + A[8] * B[8])


@njit(**_JIT1)
def _t(A):
    return (A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8])


@njit(**_JIT1)
def _rotation(qw, qx, qy, qz):
    """Unnormalised quaternion (w, x, y, z) -> (R, |q|, unit quaternion)."""
    n = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
    w, x, y, z = qw / n, qx / n, qy / n, qz / n
    R = (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))
    return R, n, w, x, y, z


@njit(**_JIT1)
def _camera(viewmats, intrinsics, c, width, height):
    """Rotation (9-tuple), translation, intrinsics and the Jacobian's clamp limits of camera c."""
    V = viewmats[c]
    Rv = (np.float64(V[0, 0]), np.float64(V[0, 1]), np.float64(V[0, 2]), np.float64(V[1, 0]),
          np.float64(V[1, 1]), np.float64(V[1, 2]), np.float64(V[2, 0]), np.float64(V[2, 1]), np.float64(V[2, 2]))
    tv = (np.float64(V[0, 3]), np.float64(V[1, 3]), np.float64(V[2, 3]))
    fx, fy = np.float64(intrinsics[c, 0]), np.float64(intrinsics[c, 1])
    cx, cy = np.float64(intrinsics[c, 2]), np.float64(intrinsics[c, 3])
    lims = (cx / fx + FOV_MARGIN * 0.5 * width / fx, (width - cx) / fx + FOV_MARGIN * 0.5 * width / fx,
            cy / fy + FOV_MARGIN * 0.5 * height / fy, (height - cy) / fy + FOV_MARGIN * 0.5 * height / fy)
    return Rv, tv, (fx, fy, cx, cy), lims


@njit(**_JIT1)
def _cov2d(pc, A, K, lims):
    """Camera point, A = Rv R diag(s), intrinsics, limits -> (J terms, clamp values, J S rows, undilated cov2d).

    S = A A^T is the camera-frame covariance; J the 3DGS Jacobian at the point clamped to 1.3x the FOV.
    A clamp value is NaN when that coordinate was not clamped (then the Jacobian depends on it).
    """
    fx, fy = K[0], K[1]
    x, y, z = pc
    S = _mm(A, _t(A))
    ux, uy = x / z, y / z
    tx, ty = x, y
    clx, cly = np.nan, np.nan
    if ux < -lims[0] or ux > lims[1]:
        clx = min(max(ux, -lims[0]), lims[1])
        tx = z * clx
    if uy < -lims[2] or uy > lims[3]:
        cly = min(max(uy, -lims[2]), lims[3])
        ty = z * cly
    J00, J02 = fx / z, -fx * tx / (z * z)
    J11, J12 = fy / z, -fy * ty / (z * z)
    T0 = (J00 * S[0] + J02 * S[6], J00 * S[1] + J02 * S[7], J00 * S[2] + J02 * S[8])
    T1 = (J11 * S[3] + J12 * S[6], J11 * S[4] + J12 * S[7], J11 * S[5] + J12 * S[8])
    a = T0[0] * J00 + T0[2] * J02
    b = T0[1] * J11 + T0[2] * J12
    c = T1[1] * J11 + T1[2] * J12
    return (J00, J02, J11, J12), (clx, cly), T0, T1, (a, b, c)


@njit(**_JIT1)
def _scaled(R, s0, s1, s2):
    return (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2, R[6] * s0, R[7] * s1, R[8] * s2)


@njit(**_JIT1)
def _to_camera(Rv, tv, m0, m1, m2):
    return (Rv[0] * m0 + Rv[1] * m1 + Rv[2] * m2 + tv[0], Rv[3] * m0 + Rv[4] * m1 + Rv[5] * m2 + tv[1],
            Rv[6] * m0 + Rv[7] * m1 + Rv[8] * m2 + tv[2])


@njit(**_JIT)
def project_fwd(means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, eps2d,
                antialiased, means2d, conics, depths, opac_out, radii):
    """means (P, 3), quats (P, 4), scales (P, 3) activated, opacities (P,) activated, viewmats (C, 4, 4) w2c,
    intrinsics (C, 4) -> fills means2d (C, P, 2), conics (C, P, 3), depths (C, P), opac_out (C, P), radii (C, P, 2)."""
    C = viewmats.shape[0]
    P = means.shape[0]
    for i in prange(C * P):
        c = i // P
        g = i - c * P
        Rv, tv, K, lims = _camera(viewmats, intrinsics, c, width, height)
        pc = _to_camera(Rv, tv, np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2]))
        depths[c, g] = pc[2]
        means2d[c, g, 0] = 0.0
        means2d[c, g, 1] = 0.0
        conics[c, g, 0] = 0.0
        conics[c, g, 1] = 0.0
        conics[c, g, 2] = 0.0
        opac_out[c, g] = 0.0
        radii[c, g, 0] = 0.0
        radii[c, g, 1] = 0.0
        if not (pc[2] >= near and pc[2] <= far):
            continue
        R, _, _, _, _, _ = _rotation(quats[g, 0], quats[g, 1], quats[g, 2], quats[g, 3])
        A = _mm(Rv, _scaled(R, np.float64(scales[g, 0]), np.float64(scales[g, 1]), np.float64(scales[g, 2])))
        _, _, _, _, cov = _cov2d(pc, A, K, lims)
        a0, b, c0 = cov
        det0 = a0 * c0 - b * b
        a = a0 + eps2d
        cc = c0 + eps2d
        det = a * cc - b * b
        if not det > 0:
            continue
        rho = 1.0
        if antialiased:
            ratio = det0 / det
            rho = math.sqrt(ratio) if ratio > 0 else 0.0
        o = opacities[g] * rho
        mx = K[0] * pc[0] / pc[2] + K[2]
        my = K[1] * pc[1] / pc[2] + K[3]
        means2d[c, g, 0] = mx
        means2d[c, g, 1] = my
        conics[c, g, 0] = cc / det
        conics[c, g, 1] = -b / det
        conics[c, g, 2] = a / det
        opac_out[c, g] = o
        if not o >= ALPHA_MIN:
            continue
        k = min(EXTENT_SIGMA, math.sqrt(2.0 * math.log(255.0 * o)))
        rx = k * math.sqrt(a)
        ry = k * math.sqrt(cc)
        if mx + rx >= 0.5 and mx - rx <= width - 0.5 and my + ry >= 0.5 and my - ry <= height - 0.5:
            radii[c, g, 0] = rx
            radii[c, g, 1] = ry


@njit(**_JIT)
def project_bwd(means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, eps2d,
                antialiased, radii, v_means2d, v_conics, v_depths, v_opac,
                g_means, g_quats, g_scales, g_opacities):
    """Gradients of the projection, one Gaussian per iteration (summed over cameras, so no write races)."""
    C = viewmats.shape[0]
    P = means.shape[0]
    for g in prange(P):
        R, qn, w, x, y, z = _rotation(quats[g, 0], quats[g, 1], quats[g, 2], quats[g, 3])
        s0, s1, s2 = np.float64(scales[g, 0]), np.float64(scales[g, 1]), np.float64(scales[g, 2])
        M = _scaled(R, s0, s1, s2)
        vR = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        vs0 = vs1 = vs2 = 0.0
        vm0 = vm1 = vm2 = 0.0
        vo_total = 0.0
        for c in range(C):
            if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
                continue
            Rv, tv, K, lims = _camera(viewmats, intrinsics, c, width, height)
            fx, fy = K[0], K[1]
            pc = _to_camera(Rv, tv, np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2]))
            A = _mm(Rv, M)
            jac, clamp, T0, T1, cov = _cov2d(pc, A, K, lims)
            J00, J02, J11, J12 = jac
            a0, b, c0 = cov
            det0 = a0 * c0 - b * b
            a = a0 + eps2d
            cc = c0 + eps2d
            det = a * cc - b * b
            rho = 1.0
            if antialiased:
                ratio = det0 / det
                rho = math.sqrt(ratio) if ratio > 0 else 0.0
            vo2 = np.float64(v_opac[c, g])
            vo_total += vo2 * rho
            # conic Q = inverse of the dilated cov: dL/dcov = -Q G Q, G the symmetric gradient of Q
            qa, qb, qc = cc / det, -b / det, a / det
            ga, gb, gc = np.float64(v_conics[c, g, 0]), 0.5 * np.float64(v_conics[c, g, 1]), np.float64(v_conics[c, g, 2])
            m00 = qa * ga + qb * gb
            m01 = qa * gb + qb * gc
            m10 = qb * ga + qc * gb
            m11 = qb * gb + qc * gc
            sa = -(m00 * qa + m01 * qb)
            sb = -(m00 * qb + m01 * qc)
            sc = -(m10 * qb + m11 * qc)
            if antialiased and rho > 0:
                # d rho / d cov = rho / 2 (cov^-1 - Q)
                f = vo2 * opacities[g] * 0.5 * rho
                sa += f * (c0 / det0 - qa)
                sb += f * (-b / det0 - qb)
                sc += f * (a0 / det0 - qc)
            # cov2d = J S J^T -> dS = J^T G J, dJ = 2 G J S
            vJ00 = 2 * (sa * T0[0] + sb * T1[0])
            vJ02 = 2 * (sa * T0[2] + sb * T1[2])
            vJ11 = 2 * (sb * T0[1] + sc * T1[1])
            vJ12 = 2 * (sb * T0[2] + sc * T1[2])
            gj0 = (sa * J00, sb * J11, sa * J02 + sb * J12)
            gj1 = (sb * J00, sc * J11, sb * J02 + sc * J12)
            vS = (J00 * gj0[0], J00 * gj0[1], J00 * gj0[2],
                  J11 * gj1[0], J11 * gj1[1], J11 * gj1[2],
                  J02 * gj0[0] + J12 * gj1[0], J02 * gj0[1] + J12 * gj1[1], J02 * gj0[2] + J12 * gj1[2])
            # the camera point drives the 2D mean, the depth and the Jacobian
            px, py, pz = pc
            vu, vv = np.float64(v_means2d[c, g, 0]), np.float64(v_means2d[c, g, 1])
            iz2 = 1.0 / (pz * pz)
            vpx = fx / pz * vu
            vpy = fy / pz * vv
            vpz = -(fx * px * vu + fy * py * vv) * iz2 + v_depths[c, g] - fx * iz2 * vJ00 - fy * iz2 * vJ11
            if np.isnan(clamp[0]):
                vpx -= fx * iz2 * vJ02
                vpz += 2 * fx * px * iz2 / pz * vJ02
            else:
                vpz += fx * clamp[0] * iz2 * vJ02
            if np.isnan(clamp[1]):
                vpy -= fy * iz2 * vJ12
                vpz += 2 * fy * py * iz2 / pz * vJ12
            else:
                vpz += fy * clamp[1] * iz2 * vJ12
            vm0 += Rv[0] * vpx + Rv[3] * vpy + Rv[6] * vpz
            vm1 += Rv[1] * vpx + Rv[4] * vpy + Rv[7] * vpz
            vm2 += Rv[2] * vpx + Rv[5] * vpy + Rv[8] * vpz
            # S = Rv M M^T Rv^T: dSigma = Rv^T dS Rv, dM = (dSigma + dSigma^T) M
            vSig = _mm(_t(Rv), _mm(vS, Rv))
            vM = _mm((vSig[0] + vSig[0], vSig[1] + vSig[3], vSig[2] + vSig[6],
                      vSig[3] + vSig[1], vSig[4] + vSig[4], vSig[5] + vSig[7],
                      vSig[6] + vSig[2], vSig[7] + vSig[5], vSig[8] + vSig[8]), M)
            vR = (vR[0] + vM[0] * s0, vR[1] + vM[1] * s1, vR[2] + vM[2] * s2,
                  vR[3] + vM[3] * s0, vR[4] + vM[4] * s1, vR[5] + vM[5] * s2,
                  vR[6] + vM[6] * s0, vR[7] + vM[7] * s1, vR[8] + vM[8] * s2)
            vs0 += vM[0] * R[0] + vM[3] * R[3] + vM[6] * R[6]
            vs1 += vM[1] * R[1] + vM[4] * R[4] + vM[7] * R[7]
            vs2 += vM[2] * R[2] + vM[5] * R[5] + vM[8] * R[8]
        g_opacities[g] = vo_total
        g_means[g, 0] = vm0
        g_means[g, 1] = vm1
        g_means[g, 2] = vm2
        g_scales[g, 0] = vs0
        g_scales[g, 1] = vs1
        g_scales[g, 2] = vs2
        # R(q / |q|): gradient wrt the unit quaternion, then through the normalisation
        vw = 2 * (-z * vR[1] + y * vR[2] + z * vR[3] - x * vR[5] - y * vR[6] + x * vR[7])
        vx = 2 * (y * vR[1] + z * vR[2] + y * vR[3] - 2 * x * vR[4] - w * vR[5] + z * vR[6] + w * vR[7]
                  - 2 * x * vR[8])
        vy = 2 * (-2 * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + z * vR[5] - w * vR[6] + z * vR[7]
                  - 2 * y * vR[8])
        vz = 2 * (-2 * z * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2 * z * vR[4] + y * vR[5] + x * vR[6]
                  + y * vR[7])
        dot = w * vw + x * vx + y * vy + z * vz
        g_quats[g, 0] = (vw - w * dot) / qn
        g_quats[g, 1] = (vx - x * dot) / qn
        g_quats[g, 2] = (vy - y * dot) / qn
        g_quats[g, 3] = (vz - z * dot) / qn


# ------------------------------------------------------------------------------------------------ binning
@njit(**_JIT1)
def _box(mx, my, rx, ry, width, height):
    """Pixel index box [x0, x1] x [y0, y1] whose centres lie inside the extent, clipped to the image."""
    x0 = max(int(math.ceil(mx - rx - 0.5)), 0)
    x1 = min(int(math.floor(mx + rx - 0.5)), width - 1)
    y0 = max(int(math.ceil(my - ry - 0.5)), 0)
    y1 = min(int(math.floor(my + ry - 0.5)), height - 1)
    return x0, x1, y0, y1


@njit(**_JIT)
def count_tiles(means2d, radii, width, height, tile_size, counts, rects):
    """counts[cg] = number of tiles the pixel box of (c, g) touches (0 when culled or between pixel centres);
    rects[cg] = that tile rectangle (tx0, tx1, ty0, ty1), inclusive."""
    C, P = radii.shape[0], radii.shape[1]
    for i in prange(C * P):
        c = i // P
        g = i - c * P
        counts[i] = 0
        if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
            continue
        x0, x1, y0, y1 = _box(means2d[c, g, 0], means2d[c, g, 1], radii[c, g, 0], radii[c, g, 1], width, height)
        if x0 > x1 or y0 > y1:
            continue
        rects[i, 0] = x0 // tile_size
        rects[i, 1] = x1 // tile_size
        rects[i, 2] = y0 // tile_size
        rects[i, 3] = y1 // tile_size
        counts[i] = (rects[i, 1] - rects[i, 0] + 1) * (rects[i, 3] - rects[i, 2] + 1)


@njit(**_JIT1)
def argsort_positive(keys, out):
    """Stable argsort of non-negative float32 ``keys`` into ``out``: LSD radix sort on the IEEE bits (which order
    like the values for non-negative floats), 4 passes of 8 bits, O(n)."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    src = np.arange(n).astype(out.dtype)
    dst = np.empty(n, dtype=out.dtype)
    count = np.empty(257, dtype=np.int64)
    for shift in range(0, 32, 8):
        count[:] = 0
        for i in range(n):
            count[((bits[src[i]] >> shift) & 255) + 1] += 1
        for b in range(256):
            count[b + 1] += count[b]
        for i in range(n):
            d = (bits[src[i]] >> shift) & 255
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    out[:] = src


_BIN_CHUNK = 256


@njit(**_JIT)
def bin_tiles(order, rects, P, tiles_x, n_tiles, n_parts, tile_offsets, flat_ids, rank, rank_rects, rank_offsets,
              isect_of):
    """Stable counting sort of (tile, cg) pairs by tile, visiting ``order`` (the visible cg ids sorted by camera,
    depth) and their tile rectangles ``rects`` (C * P, 4) (from ``count_tiles``).

    The order is split in ``n_parts`` contiguous parts, each counted and filled by one thread at offsets that
    keep the parts in order, so every tile's list comes out depth-sorted and the result is deterministic.
    Also fills, for the backward's gradient reduction: rank[cg] = cg's position r in ``order`` (within a tile,
    intersection k comes before k' exactly when rank[flat_ids[k]] < rank[flat_ids[k']], depth ties included);
    rank_rects[r] = its tile rectangle; isect_of[rank_offsets[r] + j] = the position in flat_ids of its j-th tile
    (row-major in the rectangle). The rectangles are gathered in depth order once, chunk by chunk in branch-free
    loops (whose cache misses the CPU overlaps, unlike those of the branchy binning loops).
    """
    n_total = tile_offsets.shape[0] - 1
    n = order.shape[0]
    part_counts = np.zeros((n_parts, n_total), dtype=np.int64)
    for p in prange(n_parts):
        for r0 in range(p * n // n_parts, (p + 1) * n // n_parts, _BIN_CHUNK):
            r1 = min(r0 + _BIN_CHUNK, (p + 1) * n // n_parts)
            for r in range(r0, r1):
                cg = order[r]
                rank[cg] = r
                for f in range(4):
                    rank_rects[r, f] = rects[cg, f]
            for r in range(r0, r1):
                base = (order[r] // P) * n_tiles
                for ty in range(rank_rects[r, 2], rank_rects[r, 3] + 1):
                    for tx in range(rank_rects[r, 0], rank_rects[r, 1] + 1):
                        part_counts[p, base + ty * tiles_x + tx] += 1
    run = 0
    for r in range(n):
        rank_offsets[r] = run
        run += (rank_rects[r, 1] - rank_rects[r, 0] + 1) * (rank_rects[r, 3] - rank_rects[r, 2] + 1)
    rank_offsets[n] = run
    # exclusive prefix sum over (tile, part): part p of tile t starts after all parts of earlier tiles
    run = 0
    for t in range(n_total):
        tile_offsets[t] = run
        for p in range(n_parts):
            cnt = part_counts[p, t]
            part_counts[p, t] = run
            run += cnt
    tile_offsets[n_total] = run
    for p in prange(n_parts):
        for r in range(p * n // n_parts, (p + 1) * n // n_parts):
            cg = order[r]
            base = (cg // P) * n_tiles
            j = rank_offsets[r]
            for ty in range(rank_rects[r, 2], rank_rects[r, 3] + 1):
                for tx in range(rank_rects[r, 0], rank_rects[r, 1] + 1):
                    t = base + ty * tiles_x + tx
                    pos = part_counts[p, t]
                    part_counts[p, t] = pos + 1
                    flat_ids[pos] = cg
                    isect_of[j] = pos
                    j += 1


# ------------------------------------------------------------------------------------------------ rasterisation
# One tile per task (dynamic schedule), Gaussians outer, pixels inner, in float32. A tile's pixels are stored
# row by row with a row stride of a power of two >= 16 (padding lanes are masked), so that the pixels of the
# rows a Gaussian covers form one contiguous run: the innermost loop walks that run with no data-dependent
# branches and LLVM vectorises it to 16 float32 lanes (one AVX-512 register, two AVX2 ones). The rows are those
# of the Gaussian's pixel box where its alpha >= 1/255 ellipse can be (``_strip_rows``). The tile's per-pixel
# state lives in one 2D array whose field stride is a compile-time constant, which tells LLVM the fields cannot
# overlap (separate arrays cost ~150 instructions of runtime alias checks before every Gaussian). Everything a
# tile reads about a Gaussian is one 64-byte record (``pack_records``), copied CHUNK records at a time into a
# local buffer by a branch-free loop whose cache misses the CPU overlaps.
MAX_TILE = 64  # largest tile side the state layout holds
STATE_STRIDE = MAX_TILE * MAX_TILE + 80  # +80 floats: staggers the fields over L1 cache sets
CHUNK = 64
_f32 = np.float32
_ZERO, _ONE, _HALF = _f32(0.0), _f32(1.0), _f32(0.5)
_A_MIN, _A_MAX, _T_MIN = _f32(ALPHA_MIN), _f32(ALPHA_MAX), _f32(T_MIN)
EXP_CLAMP = 8.0  # exp_neg32 clamps its argument here: e^-8 < 1/255, so clamped pairs stay below ALPHA_MIN
_P_MAX, _EIGHTH, _E_HALF = _f32(EXP_CLAMP), _f32(1.0 / EXP_CLAMP), _f32(math.exp(-0.5))
_C3, _C4, _C5, _C6, _C7, _C8 = (_f32(1.0 / math.factorial(i)) for i in range(3, 9))
# reassoc: vectorised reductions (deterministic: the order is fixed by the compiled code); contract: FMA
_FAST = {"contract", "reassoc", "nsz", "arcp"}
_RJIT = dict(parallel=True, fastmath=_FAST, cache=True, nogil=True, error_model="numpy")


def row_shift(tile_size: int) -> int:
    """log2 of the tile state's row stride: the smallest power of two >= max(tile_size, 16)."""
    return max(4, (int(tile_size) - 1).bit_length())


@njit(inline="always", fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def exp_neg32(p):
    """exp(-p) in float32 for 0 <= p <= 8 to ~1e-6 relative (e^-8 beyond), in straight-line code that vectorises
    (libm's exp does not): (e^-1/2 e^r)^8 with r = 1/2 - p/8 in [-1/2, 1/2], a degree-8 Taylor polynomial."""
    p = min(max(p, _ZERO), _P_MAX)
    r = _HALF - p * _EIGHTH
    r2 = r * r
    r4 = r2 * r2
    poly = ((_ONE + r) + r2 * (_HALF + r * _C3)) + r4 * ((_C4 + r * _C5) + r2 * (_C6 + r * _C7) + r4 * _C8)
    v = poly * _E_HALF
    v = v * v
    v = v * v
    return v * v


@njit(inline="always", fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height):
    c = t // n_tiles
    tt = t - c * n_tiles
    ty0 = (tt // tiles_x) * tile_size
    tx0 = (tt % tiles_x) * tile_size
    tx1 = min(tx0 + tile_size, width) - 1
    ty1 = min(ty0 + tile_size, height) - 1
    return c, tx0, tx1, ty0, ty1


ROW_SLACK = 1e-3  # widens the row bound's power threshold; the exact per-lane test decides


@njit(inline="always", **_JIT1)
def _strip_bound(a, b, c, thr, ymax, xa, xb, sign):
    """The top (sign +1) or bottom (sign -1) dy of the ellipse 0.5 a dx^2 + b dx dy + 0.5 c dy^2 <= thr within
    the strip xa <= dx <= xb; NaN when they do not meet."""
    x_ext = -b / a * ymax * sign  # where the ellipse reaches its top / bottom
    if xa <= x_ext <= xb:
        return sign * ymax
    x = min(max(x_ext, xa), xb)  # away from there the boundary's dy moves monotonically towards the centre
    disc = (b * x) ** 2 - c * (a * x * x - 2.0 * thr)
    if disc < 0.0:
        return np.nan
    return (-b * x + sign * math.sqrt(disc)) / c


@njit(inline="always", **_JIT1)
def _strip_rows(a, b, c, thr, ymax, xa, xb):
    """[lo, hi] of dy over that ellipse (its dy half-extent ymax) within the strip (lo > hi when they do not
    meet): the bound of a Gaussian's rows in one tile, where alpha can reach 1/255."""
    if not (ymax > 0.0 and c > 0.0):
        return 1.0, 0.0
    lo = _strip_bound(a, b, c, thr, ymax, xa, xb, -1.0)
    hi = _strip_bound(a, b, c, thr, ymax, xa, xb, 1.0)
    if np.isnan(lo) or np.isnan(hi):
        return 1.0, 0.0
    return lo, hi


REC = 16  # float32 slots of a pair's raster record: one 64-byte cache line
_R_MEAN, _R_CONIC, _R_OPAC, _R_FEAT, _R_THR, _R_YMAX, _R_BOX = 0, 2, 5, 6, 10, 11, 12


@njit(**_JIT)
def pack_records(means2d, conics, opacities, features, radii, width, height, records):
    """records[cg] (C * P, REC) float32: everything rasterisation reads about pair cg in one cache line (mean,
    conic, opacity, 4 features, the alpha >= 1/255 power threshold log(255 o) + ROW_SLACK, the ellipse's dy
    half-extent at that threshold, and the pixel box as int32), so that a tile's Gaussians cost one cache miss
    each instead of five. Culled pairs (radii 0) get an empty box."""
    C, P = radii.shape[0], radii.shape[1]
    boxes = records.view(np.int32)
    for i in prange(C * P):
        c = i // P
        g = i - c * P
        mx, my = np.float64(means2d[c, g, 0]), np.float64(means2d[c, g, 1])
        a, b, cc = np.float64(conics[c, g, 0]), np.float64(conics[c, g, 1]), np.float64(conics[c, g, 2])
        o = np.float64(opacities[c, g])
        records[i, _R_MEAN] = mx
        records[i, _R_MEAN + 1] = my
        records[i, _R_CONIC] = a
        records[i, _R_CONIC + 1] = b
        records[i, _R_CONIC + 2] = cc
        records[i, _R_OPAC] = o
        for f in range(4):
            records[i, _R_FEAT + f] = features[c, g, f]
        thr = math.log(255.0 * o) + ROW_SLACK if o > 0.0 else -1.0
        det = a * cc - b * b
        records[i, _R_THR] = thr
        records[i, _R_YMAX] = math.sqrt(2.0 * thr * a / det) if thr > 0.0 and det > 0.0 and a > 0.0 else 0.0
        if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
            x0, x1, y0, y1 = 0, -1, 0, -1
        else:
            x0, x1, y0, y1 = _box(mx, my, np.float64(radii[c, g, 0]), np.float64(radii[c, g, 1]), width, height)
        boxes[i, _R_BOX] = x0
        boxes[i, _R_BOX + 1] = x1
        boxes[i, _R_BOX + 2] = y0
        boxes[i, _R_BOX + 3] = y1


@njit(inline="always", fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _gather(flat_ids, k0, k1, records, tx0, tx1, ty0, ty1, buf, gp, gi):
    """Gaussians k0..k1 - 1 of a tile -> gp[:, j] float32 (dx, dy of the tile's first pixel centre, conic a / 2,
    b, c / 2, opacity, 4 features) and gi[:, j] int32 (first row and row count within the tile, first and last
    column of the pixel box; the rows are those of the box where the alpha >= 1/255 ellipse can be).

    The records are first copied into ``buf`` by a branch-free loop, whose independent cache misses the CPU
    overlaps; the branchy part then reads the copies."""
    for k in range(k0, k1):
        cg = flat_ids[k]
        for f in range(REC):
            buf[k - k0, f] = records[cg, f]
    boxes = buf.view(np.int32)
    for k in range(k0, k1):
        j = k - k0
        mx, my = np.float64(buf[j, _R_MEAN]), np.float64(buf[j, _R_MEAN + 1])
        x0, x1 = boxes[j, _R_BOX], boxes[j, _R_BOX + 1]
        y0, y1 = boxes[j, _R_BOX + 2], boxes[j, _R_BOX + 3]
        x0, x1, y0, y1 = max(x0, tx0), min(x1, tx1), max(y0, ty0), min(y1, ty1)
        ca, cb, cc = np.float64(buf[j, _R_CONIC]), np.float64(buf[j, _R_CONIC + 1]), np.float64(buf[j, _R_CONIC + 2])
        lo, hi = _strip_rows(ca, cb, cc, np.float64(buf[j, _R_THR]), np.float64(buf[j, _R_YMAX]),
                             x0 + 0.5 - mx, x1 + 0.5 - mx)
        y0 = max(y0, int(math.ceil(my + lo - 0.5)))
        y1 = min(y1, int(math.floor(my + hi - 0.5)))
        gp[0, j] = tx0 + 0.5 - mx
        gp[1, j] = ty0 + 0.5 - my
        gp[2, j] = 0.5 * ca
        gp[3, j] = cb
        gp[4, j] = 0.5 * cc
        for f in range(5):
            gp[5 + f, j] = buf[j, _R_OPAC + f]
        gi[0, j] = y0 - ty0
        gi[1, j] = y1 - y0 + 1 if x0 <= x1 and y0 <= y1 else 0
        gi[2, j] = x0 - tx0
        gi[3, j] = x1 - tx0


# tile state fields (rows of the state array)
_F_T, _F_COL, _F_ROW = 0, 1, 2  # transmittance, pixel column and row within the tile (float32)
# forward: 4 accumulated features, their weight sum (the pixel's alpha: 1 - T would lose the relative precision
# of small alphas to the rounding of T near 1), index of the last contributor (int32 view)
_F_ACC, _F_WSUM, _F_LAST = 3, 7, 8
# backward: v_alpha * final T, the 4 output gradients, the features composited behind the current Gaussian dotted
# with the output gradients (the only way the backward uses them: one field instead of four), last contributor
_F_VA, _F_V, _F_BP, _F_LASTB = 3, 4, 8, 9


@njit(**_RJIT)
def rasterize_fwd(records, tile_offsets, flat_ids, width, height, tile_size, shift, out_feat, out_alpha, final_T,
                  last_ids, work):
    """Front-to-back compositing of the pairs' ``records`` (see ``pack_records``) -> out_feat (C, H, W, 4), out_alpha,
    final_T (C, H, W) float32, last_ids (C, H, W) int64 (flat index of the last contributor, -1 for none) and
    work (n_tiles_total, 2): pixel lanes evaluated and pixel-Gaussian pairs that contributed.

    A pixel's T is > 0 while it composites; terminated pixels and padding lanes hold -T, so one array carries
    both, and a tile stops at the first Gaussian after all its pixels terminated.
    """
    tiles_x = (width + tile_size - 1) // tile_size
    n_tiles = tiles_x * ((height + tile_size - 1) // tile_size)
    stride = 1 << shift
    mask = stride - 1
    for t in prange(tile_offsets.shape[0] - 1):
        c, tx0, tx1, ty0, ty1 = _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height)
        npix = (ty1 - ty0 + 1) * stride
        S = np.empty((9, STATE_STRIDE), dtype=np.float32)
        L = S.view(np.int32)
        n_live = 0
        for i in range(npix):
            live = (i & mask) <= tx1 - tx0
            S[_F_T, i] = _ONE if live else -_ONE
            n_live += 1 if live else 0
            S[_F_COL, i] = i & mask
            S[_F_ROW, i] = i >> shift
            for f in range(5):
                S[_F_ACC + f, i] = _ZERO
            L[_F_LAST, i] = -1
        buf = np.empty((CHUNK, REC), dtype=np.float32)
        gp = np.empty((10, CHUNK), dtype=np.float32)
        gi = np.empty((4, CHUNK), dtype=np.int32)
        n_eval = 0
        n_used = 0
        start, end = tile_offsets[t], tile_offsets[t + 1]
        for k0 in range(start, end, CHUNK):
            if n_live <= 0:
                break
            k1 = min(k0 + CHUNK, end)
            _gather(flat_ids, k0, k1, records, tx0, tx1, ty0, ty1, buf, gp, gi)
            for k in range(k0, k1):
                if n_live <= 0:
                    break
                j = k - k0
                if gi[1, j] <= 0:
                    continue
                dx0, dy0, ha, b, hc, o = gp[0, j], gp[1, j], gp[2, j], gp[3, j], gp[4, j], gp[5, j]
                f0, f1, f2, f3 = gp[6, j], gp[7, j], gp[8, j], gp[9, j]
                lo, hi = _f32(gi[2, j]), _f32(gi[3, j])
                n = np.uint64(gi[1, j] << shift)
                base = np.uint64(gi[0, j] << shift)  # unsigned: no negative-index wraparound in the loop
                kk = np.int32(k - start)
                n_stop = _ZERO  # float32 counters: int64 ones would halve the vector width
                n_use = _ZERO
                for e in range(n):
                    i = base + e
                    col = S[_F_COL, i]
                    dx = col + dx0
                    dy = S[_F_ROW, i] + dy0
                    power = dx * (ha * dx + b * dy) + hc * dy * dy
                    raw = o * exp_neg32(power)
                    alpha = min(_A_MAX, raw)
                    t_i = S[_F_T, i]
                    ok = (col >= lo) & (col <= hi) & (power >= _ZERO) & (raw >= _A_MIN) & (t_i > _ZERO)
                    t_next = t_i * (_ONE - alpha)
                    stop = ok & (t_next < _T_MIN)
                    use = ok & (t_next >= _T_MIN)
                    w = alpha * t_i if use else _ZERO
                    S[_F_ACC, i] += w * f0
                    S[_F_ACC + 1, i] += w * f1
                    S[_F_ACC + 2, i] += w * f2
                    S[_F_ACC + 3, i] += w * f3
                    S[_F_WSUM, i] += w
                    S[_F_T, i] = t_next if use else (-t_i if stop else t_i)
                    L[_F_LAST, i] = kk if use else L[_F_LAST, i]
                    n_stop += _ONE if stop else _ZERO
                    n_use += _ONE if use else _ZERO
                n_eval += np.int64(n)
                n_used += int(n_use)
                n_live -= int(n_stop)
        work[t, 0] = n_eval
        work[t, 1] = n_used
        for iy in range(ty0, ty1 + 1):
            for ix in range(tx0, tx1 + 1):
                i = ((iy - ty0) << shift) + ix - tx0
                for f in range(4):
                    out_feat[c, iy, ix, f] = S[_F_ACC + f, i]
                out_alpha[c, iy, ix] = S[_F_WSUM, i]
                final_T[c, iy, ix] = abs(S[_F_T, i])
                last_ids[c, iy, ix] = L[_F_LAST, i] + start if L[_F_LAST, i] >= 0 else -1


@njit(**_RJIT)
def rasterize_bwd(records, tile_offsets, flat_ids, rank, width, height, tile_size, shift, final_T, last_ids, v_feat,
                  v_alpha, grad_rows, tile_last):
    """Back-to-front replay of each pixel's contributors (3DGS): T is recovered by dividing by (1 - alpha), the
    features behind each Gaussian accumulate on the way (as their dot product with the pixel's output gradient,
    all the gradient needs of them). The per-lane gradient sums of intersection k (vectorised reductions) become
    row k of grad_rows (n_isect, N_GRAD + 4), written sequentially within the tile; only the tile's Gaussians up
    to its last contributor get rows, and tile_last[t] receives that contributor's ``rank`` (-1 if none), which
    tells ``reduce_grads`` which rows exist.
    """
    tiles_x = (width + tile_size - 1) // tile_size
    n_tiles = tiles_x * ((height + tile_size - 1) // tile_size)
    stride = 1 << shift
    mask = stride - 1
    for t in prange(tile_offsets.shape[0] - 1):
        start, end = tile_offsets[t], tile_offsets[t + 1]
        tile_last[t] = -1
        if start == end:
            continue
        c, tx0, tx1, ty0, ty1 = _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height)
        npix = (ty1 - ty0 + 1) * stride
        S = np.empty((10, STATE_STRIDE), dtype=np.float32)
        L = S.view(np.int32)
        for i in range(npix):  # padding lanes: finite zeros (they are masked, but 0 * NaN would not be)
            for f in range(9):
                S[f, i] = _ZERO
            S[_F_COL, i] = i & mask
            S[_F_ROW, i] = i >> shift
            L[_F_LASTB, i] = -1
        kmax = -1
        for iy in range(ty0, ty1 + 1):
            for ix in range(tx0, tx1 + 1):
                i = ((iy - ty0) << shift) + ix - tx0
                S[_F_T, i] = final_T[c, iy, ix]
                lk = last_ids[c, iy, ix]
                L[_F_LASTB, i] = lk - start if lk >= 0 else -1
                kmax = max(kmax, lk)
                S[_F_VA, i] = v_alpha[c, iy, ix] * final_T[c, iy, ix]
                for f in range(4):
                    S[_F_V + f, i] = v_feat[c, iy, ix, f]
        if kmax < 0:
            continue
        tile_last[t] = rank[flat_ids[kmax]]
        buf = np.empty((CHUNK, REC), dtype=np.float32)
        gp = np.empty((10, CHUNK), dtype=np.float32)
        gi = np.empty((4, CHUNK), dtype=np.int32)
        for ch in range((kmax - start) // CHUNK, -1, -1):
            k0 = start + ch * CHUNK
            k1 = min(k0 + CHUNK, kmax + 1)
            _gather(flat_ids, k0, k1, records, tx0, tx1, ty0, ty1, buf, gp, gi)
            for k in range(k1 - 1, k0 - 1, -1):
                j = k - k0
                dx0, dy0, ha, b, hc, o = gp[0, j], gp[1, j], gp[2, j], gp[3, j], gp[4, j], gp[5, j]
                f0, f1, f2, f3 = gp[6, j], gp[7, j], gp[8, j], gp[9, j]
                lo, hi = _f32(gi[2, j]), _f32(gi[3, j])
                n = np.uint64(max(gi[1, j], 0) << shift)
                base = np.uint64(gi[0, j] << shift)
                kk = np.int32(k - start)
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = _ZERO
                for e in range(n):
                    i = base + e
                    col = S[_F_COL, i]
                    dx = col + dx0
                    dy = S[_F_ROW, i] + dy0
                    power = dx * (ha * dx + b * dy) + hc * dy * dy
                    ex = exp_neg32(power)
                    raw = o * ex
                    alpha = min(_A_MAX, raw)
                    act = (col >= lo) & (col <= hi) & (power >= _ZERO) & (raw >= _A_MIN) & (kk <= L[_F_LASTB, i])
                    inv = _ONE / (_ONE - alpha)
                    t_i = S[_F_T, i] * inv
                    w = alpha * t_i if act else _ZERO
                    p0, p1, p2, p3 = S[_F_V, i], S[_F_V + 1, i], S[_F_V + 2, i], S[_F_V + 3, i]
                    fp = f0 * p0 + f1 * p1 + f2 * p2 + f3 * p3
                    bp = S[_F_BP, i]
                    # d loss / d alpha: own colour in front of what is behind, and the pixel's alpha
                    v_al = t_i * fp + inv * (S[_F_VA, i] - bp)
                    s6 += w * p0
                    s7 += w * p1
                    s8 += w * p2
                    s9 += w * p3
                    S[_F_BP, i] = bp + fp * w
                    S[_F_T, i] = t_i if act else S[_F_T, i]
                    grad = act & (raw <= _A_MAX)  # the clamp at 0.99 has zero gradient
                    vp = -raw * v_al if grad else _ZERO  # d loss / d power
                    s5 += ex * v_al if grad else _ZERO
                    s0 += vp * dx
                    s1 += vp * dy
                    s2 += vp * dx * dx
                    s3 += vp * dx * dy
                    s4 += vp * dy * dy
                # power = a/2 dx^2 + b dx dy + c/2 dy^2 with dx = pixel - mean
                grad_rows[k, 0] = -(2 * ha * s0 + b * s1)
                grad_rows[k, 1] = -(b * s0 + 2 * hc * s1)
                grad_rows[k, 2] = _HALF * s2
                grad_rows[k, 3] = s3
                grad_rows[k, 4] = _HALF * s4
                grad_rows[k, 5] = s5
                grad_rows[k, 6] = s6
                grad_rows[k, 7] = s7
                grad_rows[k, 8] = s8
                grad_rows[k, 9] = s9


@njit(**_JIT)
def reduce_grads(grad_rows, tile_last, order, rank_rects, rank_offsets, isect_of, P, tiles_x, n_tiles, by_rank):
    """by_rank[r] = sum of the gradient rows of pair order[r] over the tiles whose backward reached it
    (r <= tile_last[t]), in the fixed order of its tile rectangle: deterministic and independent of the thread
    count. Only rows that were written are read; the loop walks everything else sequentially."""
    n_cols = grad_rows.shape[1]
    for r in prange(order.shape[0]):
        for col in range(n_cols):
            by_rank[r, col] = 0.0
        base = (order[r] // P) * n_tiles
        j = rank_offsets[r]
        for ty in range(rank_rects[r, 2], rank_rects[r, 3] + 1):
            for tx in range(rank_rects[r, 0], rank_rects[r, 1] + 1):
                if r <= tile_last[base + ty * tiles_x + tx]:
                    k = isect_of[j]
                    for col in range(n_cols):
                        by_rank[r, col] += grad_rows[k, col]
                j += 1


@njit(**_JIT)
def unrank(by_rank, rank, out):
    """out[cg] = by_rank[rank[cg]], 0 where rank[cg] < 0 (pairs no tile saw)."""
    n_cols = out.shape[1]
    for cg in prange(out.shape[0]):
        r = rank[cg]
        for col in range(n_cols):
            out[cg, col] = by_rank[r, col] if r >= 0 else 0.0


# ------------------------------------------------------------------------------------------------ shading
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
          1.445305721320277, -0.5900435899266435)


@njit(**_JIT1)
def _sh_basis(x, y, z):
    """The 16 real SH basis values of degree <= 3 at unit direction (x, y, z), 3DGS ordering and signs."""
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return (_SH_C0, -_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x,
            _SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz, _SH_C2[4] * (xx - yy),
            _SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * xy * z, _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy))


@njit(**_JIT1)
def _sh_basis_grad(x, y, z):
    """d basis / d (x, y, z) as three 16-tuples."""
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    c1, c2, c3 = _SH_C1, _SH_C2, _SH_C3
    dx = (0.0, 0.0, 0.0, -c1, c2[0] * y, 0.0, -2 * c2[2] * x, c2[3] * z, 2 * c2[4] * x,
          6 * c3[0] * xy, c3[1] * yz, -2 * c3[2] * xy, -6 * c3[3] * xz, c3[4] * (4 * zz - 3 * xx - yy),
          2 * c3[5] * xz, 3 * c3[6] * (xx - yy))
    dy = (0.0, -c1, 0.0, 0.0, c2[0] * x, c2[1] * z, -2 * c2[2] * y, 0.0, -2 * c2[4] * y,
          3 * c3[0] * (xx - yy), c3[1] * xz, c3[2] * (4 * zz - xx - 3 * yy), -6 * c3[3] * yz, -2 * c3[4] * xy,
          -2 * c3[5] * yz, -6 * c3[6] * xy)
    dz = (0.0, 0.0, c1, 0.0, 0.0, c2[1] * y, 4 * c2[2] * z, c2[3] * x, 0.0,
          0.0, c3[1] * xy, 8 * c3[2] * yz, c3[3] * (6 * zz - 3 * xx - 3 * yy), 8 * c3[4] * xz,
          c3[5] * (xx - yy), 0.0)
    return dx, dy, dz


@njit(**_JIT1)
def _direction(means, centers, g, c):
    vx = np.float64(means[g, 0]) - centers[c, 0]
    vy = np.float64(means[g, 1]) - centers[c, 1]
    vz = np.float64(means[g, 2]) - centers[c, 2]
    n = max(math.sqrt(vx * vx + vy * vy + vz * vz), 1e-12)
    return vx / n, vy / n, vz / n, n


@njit(**_JIT)
def shade_fwd(means, centers, sh_dc, sh_rest, n_coeffs, radii, colors):
    """colors (C, P, 3) = max(sum_k sh_k Y_k(dir) + 0.5, 0) with dir from camera centre c to Gaussian g, for the
    first ``n_coeffs`` coefficients; pairs culled by the projection (radii 0) get 0."""
    C, P = colors.shape[0], colors.shape[1]
    for i in prange(C * P):
        c = i // P
        g = i - c * P
        if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
            for ch in range(3):
                colors[c, g, ch] = 0.0
            continue
        x, y, z, _ = _direction(means, centers, g, c)
        basis = _sh_basis(x, y, z)
        v0, v1, v2 = _sh_values(basis, sh_dc, sh_rest, g, n_coeffs)
        colors[c, g, 0] = max(v0 + 0.5, 0.0)
        colors[c, g, 1] = max(v1 + 0.5, 0.0)
        colors[c, g, 2] = max(v2 + 0.5, 0.0)


@njit(inline="always", **_JIT1)
def _sh_values(basis, sh_dc, sh_rest, g, n_coeffs):
    """The three channels' sum_k sh_k Y_k, coefficient-major (the memory order of sh_rest (P, K - 1, 3))."""
    v0 = basis[0] * sh_dc[g, 0, 0]
    v1 = basis[0] * sh_dc[g, 0, 1]
    v2 = basis[0] * sh_dc[g, 0, 2]
    for k in range(1, n_coeffs):
        bk = basis[k]
        v0 += bk * sh_rest[g, k - 1, 0]
        v1 += bk * sh_rest[g, k - 1, 1]
        v2 += bk * sh_rest[g, k - 1, 2]
    return v0, v1, v2


@njit(**_JIT)
def shade_bwd(means, centers, sh_dc, sh_rest, n_coeffs, radii, v_colors, g_means, g_dc, g_rest):
    """Gradients of shade_fwd, one Gaussian per iteration (summed over cameras): the clamp passes the gradient
    where the offset value is >= 0; the direction's gradient goes through its normalisation to the mean."""
    C, P = v_colors.shape[0], v_colors.shape[1]
    for g in prange(P):
        for ch in range(3):
            g_dc[g, 0, ch] = 0.0
        for k in range(g_rest.shape[1]):
            for ch in range(3):
                g_rest[g, k, ch] = 0.0
        gm0 = gm1 = gm2 = 0.0
        for c in range(C):
            if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
                continue
            x, y, z, n = _direction(means, centers, g, c)
            basis = _sh_basis(x, y, z)
            v0, v1, v2 = _sh_values(basis, sh_dc, sh_rest, g, n_coeffs)
            # the clamp at 0 passes no gradient below it
            vc0 = 0.0 if v0 + 0.5 < 0.0 else np.float64(v_colors[c, g, 0])
            vc1 = 0.0 if v1 + 0.5 < 0.0 else np.float64(v_colors[c, g, 1])
            vc2 = 0.0 if v2 + 0.5 < 0.0 else np.float64(v_colors[c, g, 2])
            g_dc[g, 0, 0] += vc0 * basis[0]
            g_dc[g, 0, 1] += vc1 * basis[0]
            g_dc[g, 0, 2] += vc2 * basis[0]
            if n_coeffs == 1:
                continue  # the constant term does not depend on the direction
            dx, dy, dz = _sh_basis_grad(x, y, z)
            vdx = vdy = vdz = 0.0
            for k in range(1, n_coeffs):
                bk = basis[k]
                g_rest[g, k - 1, 0] += vc0 * bk
                g_rest[g, k - 1, 1] += vc1 * bk
                g_rest[g, k - 1, 2] += vc2 * bk
                s = vc0 * sh_rest[g, k - 1, 0] + vc1 * sh_rest[g, k - 1, 1] + vc2 * sh_rest[g, k - 1, 2]
                vdx += s * dx[k]
                vdy += s * dy[k]
                vdz += s * dz[k]
            dot = x * vdx + y * vdy + z * vdz
            gm0 += (vdx - x * dot) / n
            gm1 += (vdy - y * dot) / n
            gm2 += (vdz - z * dot) / n
        g_means[g, 0] = gm0
        g_means[g, 1] = gm1
        g_means[g, 2] = gm2
