"""The fast CPU backend: numba kernels (``_cpu_kernels.py``) wrapped in autograd Functions.

Structured like gsplat: ``project`` (Function with its own backward) -> ``shade`` (SH colours, Function) ->
``intersect`` (tile binning, no gradient) -> ``rasterize`` (Function with its own backward). Tiles are binned by a
stable counting sort over Gaussians already sorted by depth, which gives gsplat's (tile | depth) key order without
a 64-bit key sort; the binning also records its inverse map, through which the raster backward sums each pair's
per-tile gradient rows in a fixed order (bitwise reproducible for any thread count). Everything is float32 at the
boundaries; the cameras get no gradient from this backend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat import _cpu_kernels as K
from manyview.splat.backend import RenderSettings, StagedBackend
from manyview.splat.gaussians import GaussianStore
from manyview.splat.types import EPS2D, Projected

_profile: dict[str, float] | None = None


@contextlib.contextmanager
def profile() -> Iterator[dict[str, float]]:
    """Collect seconds spent per stage (project, shade, intersect, raster_fwd, raster_bwd, shade_bwd,
    project_bwd)."""
    global _profile
    previous, _profile = _profile, {}
    try:
        yield _profile
    finally:
        _profile = previous


@contextlib.contextmanager
def _stage(name: str):
    start = time.perf_counter()
    yield
    if _profile is not None:
        _profile[name] = _profile.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def _dynamic_schedule(chunk: int = 1):
    """Tiles differ wildly in cost; hand them out dynamically instead of in equal static blocks."""
    old = numba.set_parallel_chunksize(chunk)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _empty(*shape: int, dtype=np.float32) -> Tensor:
    """An uninitialised CPU tensor for a kernel to fill, allocated by numpy: numpy asks the kernel for transparent
    huge pages on large arrays and torch does not, which halves the cost of first touching a fresh output (55 ms
    less for the 180 MB SH gradient of 1M Gaussians)."""
    return torch.from_numpy(np.empty(shape, dtype=dtype))


# ------------------------------------------------------------------------------------------------ project
class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, antialiased):
        C, P = viewmats.shape[0], means.shape[0]
        means2d, conics, radii = _empty(C, P, 2), _empty(C, P, 3), _empty(C, P, 2)
        depths, opac = _empty(C, P), _empty(C, P)
        with _stage("project"):
            K.project_fwd(_np(means), _np(quats), _np(scales), _np(opacities), _np(viewmats), _np(intrinsics),
                          width, height, near, far, EPS2D, antialiased, means2d.numpy(), conics.numpy(),
                          depths.numpy(), opac.numpy(), radii.numpy())
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, intrinsics, radii)
        ctx.args = (width, height, near, far, antialiased)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, opac, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_opac, _v_radii):
        means, quats, scales, opacities, viewmats, intrinsics, radii = ctx.saved_tensors
        width, height, near, far, antialiased = ctx.args
        C, P = radii.shape[:2]
        zeros = lambda t, *s: torch.zeros(*s) if t is None else t
        v_means2d, v_conics = zeros(v_means2d, C, P, 2), zeros(v_conics, C, P, 3)
        v_depths, v_opac = zeros(v_depths, C, P), zeros(v_opac, C, P)
        g_means, g_quats = _empty(P, 3), _empty(P, 4)
        g_scales, g_opac = _empty(P, 3), _empty(P)
        with _stage("project_bwd"):
            K.project_bwd(_np(means), _np(quats), _np(scales), _np(opacities), _np(viewmats), _np(intrinsics),
                          width, height, near, far, EPS2D, antialiased, _np(radii), _np(v_means2d),
                          _np(v_conics), _np(v_depths), _np(v_opac), g_means.numpy(), g_quats.numpy(),
                          g_scales.numpy(), g_opac.numpy())
        return g_means, g_quats, g_scales, g_opac, None, None, None, None, None, None, None


def project(g: GaussianStore, cameras: Cameras, mode: str = "classic", near: float = 0.01,
            far: float = 1e10) -> Projected:
    """Gaussians (P) x cameras (C,) -> :class:`Projected` (float32, CPU)."""
    height, width = (int(v) for v in cameras.image_size[0])
    f32 = lambda t: t.to(torch.float32)
    means2d, conics, depths, opac, radii = _Project.apply(
        f32(g.means), f32(g.quats), f32(g.log_scales).exp(), torch.sigmoid(f32(g.opacity_logits)),
        cameras.w2c.detach().to(torch.float32), cameras.fxfycxcy.detach().to(torch.float32),
        width, height, float(near), float(far), mode == "antialiased")
    return Projected(means2d, conics, depths, opac, radii)


# ------------------------------------------------------------------------------------------------ shade
class _Shade(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, sh_dc, sh_rest, centers, radii, n_coeffs):
        C, P = radii.shape[:2]
        colors = _empty(C, P, 3)
        with _stage("shade"):
            K.shade_fwd(_np(means), _np(centers), _np(sh_dc), _np(sh_rest), n_coeffs, _np(radii), colors.numpy())
        ctx.save_for_backward(means, sh_dc, sh_rest, centers, radii)
        ctx.n_coeffs = n_coeffs
        return colors

    @staticmethod
    def backward(ctx, v_colors):
        means, sh_dc, sh_rest, centers, radii = ctx.saved_tensors
        g_means, g_dc, g_rest = _empty(*means.shape), _empty(*sh_dc.shape), _empty(*sh_rest.shape)
        with _stage("shade_bwd"):
            K.shade_bwd(_np(means), _np(centers), _np(sh_dc), _np(sh_rest), ctx.n_coeffs, _np(radii), _np(v_colors),
                        g_means.numpy(), g_dc.numpy(), g_rest.numpy())
        return g_means, g_dc, g_rest, None, None, None


def shade(g: GaussianStore, cameras: Cameras, sh_degree: int, proj: Projected) -> Tensor:
    """(C, P, 3) SH colours seen from each camera centre; 0 for pairs the projection culled."""
    f32 = lambda t: t.to(torch.float32).contiguous()
    return _Shade.apply(f32(g.means), f32(g.sh_dc), f32(g.sh_rest), cameras.centers.detach().to(torch.float64),
                        proj.radii, (sh_degree + 1) ** 2)


# ------------------------------------------------------------------------------------------------ intersect
@dataclass(frozen=True)
class Intersections:
    """(tile, camera-Gaussian) pairs in tile-major, depth-minor order, and the inverse map for the backward."""

    tile_offsets: np.ndarray  # (C * n_tiles + 1,) int64: tile t owns flat_ids[tile_offsets[t]:tile_offsets[t + 1]]
    flat_ids: np.ndarray  # (n_isect,) int32 (int64 beyond 2^31 pairs) camera-Gaussian ids cg = c * P + g
    order: np.ndarray  # (n_visible,) like flat_ids: the pairs that touch a tile, by camera then depth
    rank: np.ndarray  # (C * P,) like flat_ids: position in ``order``, -1 for pairs that touch no tile
    rank_rects: np.ndarray  # (n_visible, 4) int32: tile rectangle (tx0, tx1, ty0, ty1) of order[r], inclusive
    rank_offsets: np.ndarray  # (n_visible + 1,) int64: order[r]'s intersections are isect_of[rank_offsets[r]:...]
    isect_of: np.ndarray  # (n_isect,) int32 (int64 beyond 2^31): flat_ids positions, row-major per tile rectangle

    @property
    def count(self) -> int:
        return int(self.flat_ids.shape[0])


def intersect(proj: Projected, height: int, width: int, tile_size: int) -> Intersections:
    with _stage("intersect"):
        means2d, radii, depths = _np(proj.means2d), _np(proj.radii), _np(proj.depths)
        C, P = radii.shape[:2]
        tiles_x = (width + tile_size - 1) // tile_size
        tiles = tiles_x * ((height + tile_size - 1) // tile_size)
        counts = np.empty(C * P, dtype=np.int64)
        rects = np.empty((C * P, 4), dtype=np.int32)
        K.count_tiles(means2d, radii, width, height, tile_size, counts, rects)
        id_type = np.int32 if C * P < 2**31 else np.int64
        order = []
        for c in range(C):  # visible pairs of each camera, front to back (depth >= near > 0 for all of them)
            hit = np.flatnonzero(counts[c * P:(c + 1) * P]).astype(id_type)
            by_depth = np.empty(hit.shape[0], dtype=id_type)
            K.argsort_positive(np.ascontiguousarray(depths[c, hit]), by_depth)
            order.append(hit[by_depth] + id_type(c * P))
        order = np.concatenate(order) if order else np.zeros(0, dtype=id_type)
        n_vis = order.shape[0]
        n = int(counts.sum())
        tile_offsets = np.empty(C * tiles + 1, dtype=np.int64)
        flat_ids = np.empty(n, dtype=id_type)
        rank = np.full(C * P, -1, dtype=id_type)
        rank_rects = np.empty((n_vis, 4), dtype=np.int32)
        rank_offsets = np.empty(n_vis + 1, dtype=np.int64)
        isect_of = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
        parts = max(1, min(4 * numba.get_num_threads(), n_vis))
        K.bin_tiles(order, rects, P, tiles_x, tiles, parts, tile_offsets, flat_ids, rank, rank_rects, rank_offsets,
                    isect_of)
    return Intersections(tile_offsets, flat_ids, order, rank, rank_rects, rank_offsets, isect_of)


# ------------------------------------------------------------------------------------------------ rasterize
class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii, isect, width, height, tile_size, stats):
        C, P, D = features.shape
        out, alpha = _empty(C, height, width, D), _empty(C, height, width)
        final_T, last = _empty(C, height, width), _empty(C, height, width, dtype=np.int64)
        work = np.zeros((isect.tile_offsets.shape[0] - 1, 2), dtype=np.int64)
        with _stage("raster_fwd"):
            records = np.empty((C * P, K.REC), dtype=np.float32)
            K.pack_records(_np(means2d), _np(conics), _np(opacities), _np(features), _np(radii), width, height,
                           records)
            with _dynamic_schedule():
                K.rasterize_fwd(records, isect.tile_offsets, isect.flat_ids, width, height, tile_size,
                                K.row_shift(tile_size), out.numpy(), alpha.numpy(), final_T.numpy(), last.numpy(),
                                work)
        if stats is not None:
            stats.update(intersections=isect.count, evaluated=int(work[:, 0].sum()),
                         contributing=int(work[:, 1].sum()))
        ctx.save_for_backward(final_T, last)
        ctx.args = (isect, records, C, P, D, width, height, tile_size)
        return out, alpha

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        final_T, last = ctx.saved_tensors
        isect, records, C, P, D, width, height, tile_size = ctx.args
        v_out = torch.zeros(C, height, width, D) if v_out is None else v_out
        v_alpha = torch.zeros(C, height, width) if v_alpha is None else v_alpha
        tiles_x = (width + tile_size - 1) // tile_size
        with _stage("raster_bwd"):
            # one row per intersection; only those the backward reaches are written (and then read): a prefix of
            # each tile's range, so the pages of the rest are never touched
            rows = np.empty((isect.count, K.N_GRAD + D), dtype=np.float32)
            tile_last = np.empty(isect.tile_offsets.shape[0] - 1, dtype=isect.rank.dtype)
            with _dynamic_schedule():
                K.rasterize_bwd(records, isect.tile_offsets, isect.flat_ids, isect.rank, width, height, tile_size,
                                K.row_shift(tile_size), _np(final_T), _np(last), _np(v_out.to(torch.float32)),
                                _np(v_alpha.to(torch.float32)), rows, tile_last)
            by_rank = np.empty((isect.order.shape[0], K.N_GRAD + D), dtype=np.float32)
            K.reduce_grads(rows, tile_last, isect.order, isect.rank_rects, isect.rank_offsets, isect.isect_of, P,
                           tiles_x, tiles_x * ((height + tile_size - 1) // tile_size), by_rank)
            grads = _empty(C * P, K.N_GRAD + D)
            K.unrank(by_rank, isect.rank, grads.numpy())
        grads = grads.reshape(C, P, K.N_GRAD + D)
        return (grads[..., 0:2], grads[..., 2:5], grads[..., 5], grads[..., K.N_GRAD:], None, None, None, None,
                None, None)


def rasterize(proj: Projected, features: Tensor, height: int, width: int, tile_size: int = 16,
              stats: dict | None = None) -> tuple[Tensor, Tensor]:
    """Composite ``features`` (C, P, D) -> accumulated (C, H, W, D) and alpha (C, H, W).

    ``stats``, when given, receives the number of intersections and of evaluated / contributing
    pixel-Gaussian pairs (the work the rasteriser did).
    """
    if tile_size > K.MAX_TILE:
        raise ManyviewError(f"the cpu render backend supports tile_size <= {K.MAX_TILE}, got {tile_size}")
    isect = intersect(proj, height, width, tile_size)
    return _Rasterize.apply(proj.means2d, proj.conics, proj.opacities, features.to(torch.float32).contiguous(),
                            proj.radii, isect, width, height, tile_size, stats)


# ------------------------------------------------------------------------------------------------ backend
class CpuBackend(StagedBackend):
    """float32 in and out, Gaussians on the CPU; gradients for the Gaussians only."""

    name = "cpu"
    compute_dtype = torch.float32

    def check(self, gaussians: GaussianStore) -> None:
        if gaussians.means.device.type != "cpu":
            raise ManyviewError("the cpu render backend needs the Gaussians on the CPU")

    def project(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings) -> Projected:
        return project(gaussians, cameras, settings.mode, settings.near, settings.far)

    def shade(self, gaussians: GaussianStore, cameras: Cameras, settings: RenderSettings, proj: Projected) -> Tensor:
        return shade(gaussians, cameras, settings.sh_degree, proj)

    def rasterize(self, proj: Projected, features: Tensor, height: int, width: int,
                  settings: RenderSettings) -> tuple[Tensor, Tensor]:
        return rasterize(proj, features, height, width, settings.tile_size)


BACKEND = CpuBackend()
