"""numba kernels of the CPU splatting backend: projection, SH shading and rasterisation (each with its
backward), depth sort and tile binning.

Layout follows gsplat: per camera-Gaussian pairs are flattened to ``cg = c * P + g``; a tile's id is
``c * n_tiles + ty * tiles_x + tx``; ``tile_offsets[t]:tile_offsets[t + 1]`` indexes the depth-ordered ``cg``
ids in ``flat_ids``. Parameters are float32; arithmetic and accumulators are float64 (measured no slower than
float32 here, and it keeps the backward's transmittance division exact enough). Semantics are those of
``manyview.splat.types``; ``_reference.py`` is the executable definition.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from manyview.splat.types import ALPHA_MAX, ALPHA_MIN, EXTENT_SIGMA, FOV_CLAMP, T_MIN  # numba: constants

FOV_MARGIN = FOV_CLAMP - 1.0
SPAN_SLACK = 1e-6  # widens the per-row ellipse span; the exact per-pixel test decides
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


@njit(inline="always", **_JIT1)
def _gaussian(cg, P, means2d, conics, opacities, features, radii, width, height):
    """One projected Gaussian (camera-major id ``cg``) in float64, and its pixel box: what both raster passes read."""
    c = cg // P
    g = cg - c * P
    mx, my = np.float64(means2d[c, g, 0]), np.float64(means2d[c, g, 1])
    x0, x1, y0, y1 = _box(mx, my, radii[c, g, 0], radii[c, g, 1], width, height)
    return (mx, my, np.float64(conics[c, g, 0]), np.float64(conics[c, g, 1]), np.float64(conics[c, g, 2]),
            np.float64(opacities[c, g]), np.float64(features[c, g, 0]), np.float64(features[c, g, 1]),
            np.float64(features[c, g, 2]), np.float64(features[c, g, 3]), x0, x1, y0, y1)


@njit(**_JIT)
def count_tiles(means2d, radii, width, height, tile_size, counts):
    """counts[cg] = number of tiles the pixel box of (c, g) touches (0 when culled or between pixel centres)."""
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
        counts[i] = (x1 // tile_size - x0 // tile_size + 1) * (y1 // tile_size - y0 // tile_size + 1)


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


@njit(**_JIT)
def bin_tiles(order, means2d, radii, width, height, tile_size, n_parts, tile_offsets, flat_ids):
    """Stable counting sort of (tile, cg) pairs by tile, visiting ``order`` (cg ids sorted by camera, depth).

    The order is split in ``n_parts`` contiguous parts, each counted and filled by one thread at offsets that
    keep the parts in order, so every tile's list comes out depth-sorted and the result is deterministic.
    """
    P = radii.shape[1]
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    n_total = tile_offsets.shape[0] - 1
    n = order.shape[0]
    part_counts = np.zeros((n_parts, n_total), dtype=np.int64)
    for p in prange(n_parts):
        for r in range(p * n // n_parts, (p + 1) * n // n_parts):
            cg = order[r]
            c = cg // P
            g = cg - c * P
            x0, x1, y0, y1 = _box(means2d[c, g, 0], means2d[c, g, 1], radii[c, g, 0], radii[c, g, 1], width, height)
            for ty in range(y0 // tile_size, y1 // tile_size + 1):
                for tx in range(x0 // tile_size, x1 // tile_size + 1):
                    part_counts[p, c * n_tiles + ty * tiles_x + tx] += 1
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
            c = cg // P
            g = cg - c * P
            x0, x1, y0, y1 = _box(means2d[c, g, 0], means2d[c, g, 1], radii[c, g, 0], radii[c, g, 1], width, height)
            for ty in range(y0 // tile_size, y1 // tile_size + 1):
                for tx in range(x0 // tile_size, x1 // tile_size + 1):
                    t = c * n_tiles + ty * tiles_x + tx
                    pos = part_counts[p, t]
                    part_counts[p, t] = pos + 1
                    flat_ids[pos] = cg


# ------------------------------------------------------------------------------------------------ rasterisation
# A tile's pixels are stored row by row in blocks of LANES columns (padded), so that the innermost loops run
# over LANES consecutive pixels with no data-dependent branches and LLVM turns them into SIMD code. A
# Gaussian visits, per row, only the blocks overlapping the span of its ellipse; masks do the rest. The
# kernels take the lane count as an argument equal to LANES: a compile-time trip count makes LLVM unroll
# the loop fully into scalar code instead of vectorising it.
LANES = 16


_E_HALF = math.exp(-0.5)


@njit(**_JIT1)
def exp_neg(p):
    """exp(-p) for 0 <= p <= 16 to 3e-10 relative (e^-16 beyond) in straight-line code that vectorises, unlike
    libm's exp: (e^-1/2 e^r)^16 with r = 1/2 - p/16 in [-1/2, 1/2], a degree-10 Taylor polynomial by Estrin."""
    p = min(max(p, 0.0), 16.0)
    r = 0.5 - p * 0.0625
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    poly = ((((1.0 + r) + r2 * (1 / 2 + r * (1 / 6))) + r4 * ((1 / 24 + r * (1 / 120)) + r2 * (1 / 720 + r * (1 / 5040))))
            + r8 * ((1 / 40320 + r * (1 / 362880)) + r2 * (1 / 3628800)))
    v = poly * _E_HALF
    v = v * v
    v = v * v
    v = v * v
    return v * v


@njit(**_JIT1)
def _row_span(dy, a, b, c, thr, inv_a, x_lo, x_hi, mx):
    """Pixel columns [x0, x1] within [x_lo, x_hi] whose centres can have power <= thr on a row at offset dy."""
    qb = b * dy
    disc = qb * qb - a * (c * dy * dy - 2.0 * thr)
    if disc < 0.0:
        return 1, 0
    r = math.sqrt(disc)
    lo = (-qb - r) * inv_a + mx - 0.5
    hi = (-qb + r) * inv_a + mx - 0.5
    return max(x_lo, int(math.ceil(lo))), min(x_hi, int(math.floor(hi)))


@njit(**_JIT1)
def _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height):
    c = t // n_tiles
    tt = t - c * n_tiles
    ty0 = (tt // tiles_x) * tile_size
    tx0 = (tt % tiles_x) * tile_size
    tx1 = min(tx0 + tile_size, width) - 1
    ty1 = min(ty0 + tile_size, height) - 1
    nblk = (tx1 - tx0 + LANES) // LANES
    return c, tx0, tx1, ty0, ty1, nblk


@njit(**_JIT)
def rasterize_fwd(means2d, conics, opacities, radii, features, tile_offsets, flat_ids, width, height,
                  tile_size, lanes, out_feat, out_alpha, final_T, last_ids, work):
    """Front-to-back compositing, one tile per iteration, Gaussians outer and pixels inner.

    ``features`` (C, P, 4): the channels are unrolled (RGB + depth) so that the pixel loop is the innermost
    loop and vectorises. Fills out_feat (C, H, W, 4), out_alpha (C, H, W), final_T (C, H, W) float64,
    last_ids (C, H, W) (flat index of the last contributor, -1 for none) and work (n_tiles_total, 2): pixel
    lanes evaluated and pixel-Gaussian pairs that contributed.
    """
    P = radii.shape[1]
    tiles_x = (width + tile_size - 1) // tile_size
    n_tiles = tiles_x * ((height + tile_size - 1) // tile_size)
    for t in prange(tile_offsets.shape[0] - 1):
        c, tx0, tx1, ty0, ty1, nblk = _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height)
        npad = (ty1 - ty0 + 1) * nblk * LANES
        # T > 0 while the pixel composites; terminated (and padding) pixels hold -T, so one array carries both
        T = np.ones(npad)
        acc0 = np.zeros(npad)
        acc1 = np.zeros(npad)
        acc2 = np.zeros(npad)
        acc3 = np.zeros(npad)
        last = np.full(npad, -1, dtype=np.int64)
        n_live = npad
        for i in range(npad):
            if tx0 + i % (nblk * LANES) > tx1:
                T[i] = -1.0
                n_live -= 1
        n_used = 0
        n_blocks = 0
        for k in range(tile_offsets[t], tile_offsets[t + 1]):
            if n_live <= 0:
                break
            cg = flat_ids[k]
            mx, my, ca, cb, cc2, o, f0, f1, f2, f3, x0, x1, y0, y1 = _gaussian(
                cg, P, means2d, conics, opacities, features, radii, width, height)
            x0, x1, y0, y1 = max(x0, tx0), min(x1, tx1), max(y0, ty0), min(y1, ty1)
            thr = math.log(255.0 * o) + SPAN_SLACK
            inv_a = 1.0 / ca
            for iy in range(y0, y1 + 1):
                dy = iy + 0.5 - my
                sx0, sx1 = _row_span(dy, ca, cb, cc2, thr, inv_a, x0, x1, mx)
                if sx0 > sx1:
                    continue
                cdy = 0.5 * cc2 * dy * dy
                bdy = cb * dy
                b0 = (sx0 - tx0) // LANES
                nb = (sx1 - tx0) // LANES + 1 - b0
                n_blocks += nb
                # one loop over the blocks covering the span (contiguous within the row)
                xb = tx0 + b0 * LANES
                base = np.uint64(((iy - ty0) * nblk + b0) * LANES)
                lo = np.float64(sx0 - xb) - 0.5
                hi = np.float64(sx1 - xb) + 0.5
                dx0 = xb + 0.5 - mx
                n_stop = 0
                for j in range(nb * lanes):
                    i = base + np.uint64(j)
                    fj = np.float64(j)
                    dx = dx0 + fj
                    power = 0.5 * ca * dx * dx + cdy + bdy * dx
                    raw = o * exp_neg(power)
                    alpha = min(ALPHA_MAX, raw)
                    t_i = T[i]
                    ok = (fj >= lo) & (fj <= hi) & (power >= 0.0) & (raw >= ALPHA_MIN) & (t_i > 0.0)
                    t_next = t_i * (1.0 - alpha)
                    stop = ok & (t_next < T_MIN)
                    use = ok & (t_next >= T_MIN)
                    w = alpha * t_i if use else 0.0
                    acc0[i] += w * f0
                    acc1[i] += w * f1
                    acc2[i] += w * f2
                    acc3[i] += w * f3
                    T[i] = t_next if use else (-t_i if stop else t_i)
                    last[i] = k if use else last[i]
                    n_stop += 1 if stop else 0
                    n_used += 1 if use else 0
                n_live -= n_stop
        work[t, 0] = n_blocks * LANES
        work[t, 1] = n_used
        for iy in range(ty0, ty1 + 1):
            for ix in range(tx0, tx1 + 1):
                i = ((iy - ty0) * nblk + (ix - tx0) // LANES) * LANES + (ix - tx0) % LANES
                out_feat[c, iy, ix, 0] = acc0[i]
                out_feat[c, iy, ix, 1] = acc1[i]
                out_feat[c, iy, ix, 2] = acc2[i]
                out_feat[c, iy, ix, 3] = acc3[i]
                out_alpha[c, iy, ix] = 1.0 - abs(T[i])
                final_T[c, iy, ix] = abs(T[i])
                last_ids[c, iy, ix] = last[i]


@njit(**_JIT)
def rasterize_bwd(means2d, conics, opacities, radii, features, tile_offsets, flat_ids, cg_offsets, width,
                  height, tile_size, lanes, final_T, last_ids, v_feat, v_alpha, grad_rows):
    """Back-to-front replay of each pixel's contributors (3DGS): T is recovered by dividing by (1 - alpha),
    the features behind each Gaussian are accumulated on the way. Gradients are accumulated per lane and
    summed at the end of each Gaussian (no reassociation needed) into one row per intersection of
    grad_rows (n_isect, N_GRAD + 4), which must arrive zeroed: the rows of a camera-Gaussian pair are
    ``cg_offsets[cg]`` + the tile's index in the pair's tile rectangle, so each pair's rows are contiguous.
    """
    P = radii.shape[1]
    tiles_x = (width + tile_size - 1) // tile_size
    n_tiles = tiles_x * ((height + tile_size - 1) // tile_size)
    n_cols = grad_rows.shape[1]
    for t in prange(tile_offsets.shape[0] - 1):
        start, end = tile_offsets[t], tile_offsets[t + 1]
        if start == end:
            continue
        c, tx0, tx1, ty0, ty1, nblk = _tile_geometry(t, n_tiles, tiles_x, tile_size, width, height)
        npad = (ty1 - ty0 + 1) * nblk * LANES
        T = np.ones(npad)
        va_tf = np.zeros(npad)  # d loss / d alpha_pixel * final T
        last = np.full(npad, -1, dtype=np.int64)
        v0 = np.zeros(npad)
        v1 = np.zeros(npad)
        v2 = np.zeros(npad)
        v3 = np.zeros(npad)
        bh0 = np.zeros(npad)  # features composited behind the current Gaussian (absolute weights)
        bh1 = np.zeros(npad)
        bh2 = np.zeros(npad)
        bh3 = np.zeros(npad)
        kmax = -1
        for iy in range(ty0, ty1 + 1):
            for ix in range(tx0, tx1 + 1):
                i = ((iy - ty0) * nblk + (ix - tx0) // LANES) * LANES + (ix - tx0) % LANES
                T[i] = final_T[c, iy, ix]
                last[i] = last_ids[c, iy, ix]
                kmax = max(kmax, last[i])
                va_tf[i] = v_alpha[c, iy, ix] * final_T[c, iy, ix]
                v0[i] = v_feat[c, iy, ix, 0]
                v1[i] = v_feat[c, iy, ix, 1]
                v2[i] = v_feat[c, iy, ix, 2]
                v3[i] = v_feat[c, iy, ix, 3]
        # per-lane gradient sums: 0 mean x, 1 mean y, 2 conic a, 3 conic b, 4 conic c, 5 opacity, 6.. features
        gsum = np.zeros((N_GRAD + 4, LANES))
        for k in range(kmax, start - 1, -1):
            cg = flat_ids[k]
            mx, my, ca, cb, cc2, o, f0, f1, f2, f3, x0, x1, y0, y1 = _gaussian(
                cg, P, means2d, conics, opacities, features, radii, width, height)
            row = cg_offsets[cg] + ((ty0 // tile_size - y0 // tile_size) * (x1 // tile_size - x0 // tile_size + 1)
                                    + tx0 // tile_size - x0 // tile_size)
            x0, x1, y0, y1 = max(x0, tx0), min(x1, tx1), max(y0, ty0), min(y1, ty1)
            thr = math.log(255.0 * o) + SPAN_SLACK
            inv_a = 1.0 / ca
            touched = False
            for iy in range(y0, y1 + 1):
                dy = iy + 0.5 - my
                sx0, sx1 = _row_span(dy, ca, cb, cc2, thr, inv_a, x0, x1, mx)
                if sx0 > sx1:
                    continue
                touched = True
                cdy = 0.5 * cc2 * dy * dy
                bdy = cb * dy
                for b in range((sx0 - tx0) // LANES, (sx1 - tx0) // LANES + 1):
                    xb = tx0 + b * LANES
                    base = np.uint64(((iy - ty0) * nblk + b) * LANES)
                    lo = np.float64(sx0 - xb) - 0.5
                    hi = np.float64(sx1 - xb) + 0.5
                    dx0 = xb + 0.5 - mx
                    for j in range(lanes):
                        i = base + np.uint64(j)
                        fj = np.float64(j)
                        dx = dx0 + fj
                        power = 0.5 * ca * dx * dx + cdy + bdy * dx
                        e = exp_neg(power)
                        raw = o * e
                        alpha = min(ALPHA_MAX, raw)
                        act = (fj >= lo) & (fj <= hi) & (power >= 0.0) & (raw >= ALPHA_MIN) & (k <= last[i])
                        inv = 1.0 / (1.0 - alpha)
                        t_i = T[i] * inv
                        w = alpha * t_i if act else 0.0
                        p0, p1, p2, p3 = v0[i], v1[i], v2[i], v3[i]
                        b0, b1, b2, b3 = bh0[i], bh1[i], bh2[i], bh3[i]
                        # d loss / d alpha: own colour in front of what is behind, and the pixel's alpha
                        v_al = (t_i * (f0 * p0 + f1 * p1 + f2 * p2 + f3 * p3)
                                - inv * (b0 * p0 + b1 * p1 + b2 * p2 + b3 * p3) + va_tf[i] * inv)
                        gsum[6, j] += w * p0
                        gsum[7, j] += w * p1
                        gsum[8, j] += w * p2
                        gsum[9, j] += w * p3
                        bh0[i] = b0 + f0 * w
                        bh1[i] = b1 + f1 * w
                        bh2[i] = b2 + f2 * w
                        bh3[i] = b3 + f3 * w
                        T[i] = t_i if act else T[i]
                        grad = act & (raw <= ALPHA_MAX)  # the clamp at 0.99 has zero gradient
                        vp = -raw * v_al if grad else 0.0
                        gsum[5, j] += e * v_al if grad else 0.0
                        gsum[2, j] += 0.5 * vp * dx * dx
                        gsum[3, j] += vp * dx * dy
                        gsum[4, j] += 0.5 * vp * dy * dy
                        gsum[0, j] -= vp * (ca * dx + cb * dy)
                        gsum[1, j] -= vp * (cb * dx + cc2 * dy)
            if touched:
                for col in range(n_cols):
                    total = 0.0
                    for j in range(LANES):
                        total += gsum[col, j]
                        gsum[col, j] = 0.0
                    grad_rows[row, col] = total


@njit(**_JIT)
def reduce_rows(grad_rows, cg_offsets, out):
    """out[cg] = sum of the (contiguous) intersection rows of cg, in a fixed order (deterministic)."""
    n_cols = grad_rows.shape[1]
    for cg in prange(cg_offsets.shape[0] - 1):
        for col in range(n_cols):
            out[cg, col] = 0.0
        for k in range(cg_offsets[cg], cg_offsets[cg + 1]):
            for col in range(n_cols):
                out[cg, col] += grad_rows[k, col]


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
        for ch in range(3):
            v = basis[0] * sh_dc[g, 0, ch]
            for k in range(1, n_coeffs):
                v += basis[k] * sh_rest[g, k - 1, ch]
            colors[c, g, ch] = max(v + 0.5, 0.0)


@njit(**_JIT)
def shade_bwd(means, centers, sh_dc, sh_rest, n_coeffs, radii, v_colors, g_means, g_dc, g_rest):
    """Gradients of shade_fwd, one Gaussian per iteration (summed over cameras): the clamp passes the gradient
    where the offset value is >= 0; the direction's gradient goes through its normalisation to the mean."""
    C, P = v_colors.shape[0], v_colors.shape[1]
    for g in prange(P):
        for ch in range(3):
            g_dc[g, 0, ch] = 0.0
            for k in range(g_rest.shape[1]):
                g_rest[g, k, ch] = 0.0
        gm0 = gm1 = gm2 = 0.0
        for c in range(C):
            if radii[c, g, 0] == 0.0 and radii[c, g, 1] == 0.0:
                continue
            x, y, z, n = _direction(means, centers, g, c)
            basis = _sh_basis(x, y, z)
            dx, dy, dz = _sh_basis_grad(x, y, z)
            vdx = vdy = vdz = 0.0
            for ch in range(3):
                v = basis[0] * sh_dc[g, 0, ch]
                for k in range(1, n_coeffs):
                    v += basis[k] * sh_rest[g, k - 1, ch]
                if v + 0.5 < 0.0:
                    continue
                vc = np.float64(v_colors[c, g, ch])
                g_dc[g, 0, ch] += vc * basis[0]
                for k in range(1, n_coeffs):
                    g_rest[g, k - 1, ch] += vc * basis[k]
                    s = vc * sh_rest[g, k - 1, ch]
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
