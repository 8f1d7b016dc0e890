"""Rendering a splat larger than memory: stream a :class:`~manyview.splat.mapped_ply.MappedGaussians` chunk by
chunk, keep only what each camera sees, and composite exactly, all within a byte budget.

Front-to-back compositing over depth-sorted splats does not split by chunks of Gaussians, so the render runs in
two passes, both with the CPU backend's own functions (``_cpu.project``, ``_cpu.shade``, ``_cpu.rasterize``):

1. **Stream.** Each chunk of the file is projected against every camera; the Gaussians whose pixel box touches a
   tile (exactly those the rasteriser would bin) are shaded, and each camera keeps a 60-byte record of each of its
   own (2D mean, conic, depth, opacity, extent, colour, tile rows) instead of the 236 bytes of an SH-3 Gaussian.
   Records stay in the file's order, so the rasteriser's stable depth sort breaks ties as it does in memory.
2. **Rasterise.** A camera whose kept records fit the budget is rasterised at once. Otherwise the records were
   spilled to an unnamed temporary file, and the image is cut into bands of tile rows, each rasterised from the
   records whose tile rectangle overlaps it (a tile's list holds exactly the splats covering it, in depth order,
   so the band's tiles are exactly those of the whole image). Bands are planned from a per-tile-row cost histogram
   gathered in pass 1, which overcounts a splat spanning several rows of one band, so a plan never overruns.

Every stage is per Gaussian or per tile, so the result equals the in-memory ``render(..., backend="cpu")`` bit
for bit. The budget counts the arrays the render holds (chunk windows, projections, kept records, rasteriser
buffers, images), modelled per Gaussian, per splat, per tile intersection and per pixel below, not the
interpreter and libraries (about 0.4 GB resident). On the CPU host memory is the device: the default budget is
half of ``MemAvailable``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat import _cpu
from manyview.splat import _cpu_kernels as K
from manyview.splat.backend import RenderSettings, composite
from manyview.splat.mapped_ply import MappedGaussians
from manyview.splat.render import _flat_cameras, _per_camera_background
from manyview.splat.types import Projected

GIB = 1 << 30
# A kept splat's record: means2d 2, conic 3, depth 1, opacity 1, radii 2, colour 3, first / last tile row, tiles.
_M2D, _CON, _DEP, _OPA, _RAD, _COL, _TY0, _TY1, _NT = 0, 2, 5, 6, 7, 9, 12, 13, 14
RECORD_FLOATS = 15
RECORD_BYTES = 4 * RECORD_FLOATS
# Rasterising V splats with I tile intersections into H x W pixels holds: the records and the fields built from
# them (60 + 52 B), the binning (counts, rects, depth order, ranks, rank rectangles and offsets, sort buffers:
# ~92 B), the 64-byte raster record, per intersection two ids, per pixel the accumulators, transmittance, last
# index and the composited images, per tile its work counters and offsets.
RASTER_BYTES_PER_SPLAT = 272
RASTER_BYTES_PER_INTERSECTION = 8
RASTER_BYTES_PER_PIXEL = 96
OUTPUT_BYTES_PER_PIXEL = 20  # rgb, alpha, depth float32 of a finished camera
BYTES_PER_TILE = 64
# Streaming a chunk of n Gaussians holds: the mapped window (n rows of the file), the projection inputs
# (44 B) and their activations, per camera the projection (36 B), tile counts and rectangles (24 B), and for the
# visible ones their SH coefficients, colours and records.
CHUNK_BYTES_PER_GAUSSIAN = 64 + 8
CHUNK_BYTES_PER_GAUSSIAN_CAMERA = 36 + 24 + 12 + RECORD_BYTES + 8
SPILL_WINDOW_ROWS = 1 << 16  # records read back from a spill file at a time (at most; fewer on small budgets)
MIN_SPILL_WINDOW_ROWS = 256
MIN_CHUNK = 1024
MAX_CHUNK = 1 << 20


def default_max_memory() -> int:
    """Half of the memory the kernel reports available (``MemAvailable``), or 4 GiB where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * GIB


def gib(n: float, up: bool = False) -> str:
    """Bytes as GiB, or MiB below a tenth of a GiB, to two decimals (rounded up with ``up``: a budget that works)."""
    unit, name = (GIB, "GiB") if n >= GIB / 10 else (1 << 20, "MiB")
    value = math.ceil(n / unit * 100) / 100 if up else n / unit
    return f"{value:.2f} {name}"


def budget_option(n: int) -> str:
    """The ``--max-memory`` value (GiB, rounded up to 0.01) that allows ``n`` bytes."""
    return f"--max-memory {math.ceil(n / GIB * 100) / 100:.2f}"


@dataclass(frozen=True)
class StreamedRender:
    """Images of an out-of-core render and what it took. ``visible`` and ``bands`` are per camera; ``peak_bytes``
    is the most the budget's account held at once."""

    rgb: Tensor  # (C, 3, H, W)
    alpha: Tensor  # (C, H, W)
    depth: Tensor  # (C, H, W)
    visible: tuple[int, ...]
    bands: tuple[int, ...]
    chunk_size: int
    max_memory: int
    peak_bytes: int


class _Budget:
    """The bytes the render holds, by its own account; ``take`` refuses to pass the limit."""

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 0, 0

    def take(self, n: int) -> None:
        self.used += int(n)
        if self.used > self.limit:
            raise AssertionError(f"out-of-core render overran its budget: {self.used} > {self.limit} bytes")
        self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        self.used -= int(n)


@dataclass(frozen=True)
class _Plan:
    height: int
    width: int
    tile_size: int
    cameras: int
    chunk: int

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def fixed_bytes(self) -> int:
        """The images of every camera and one camera's rasteriser pixel buffers."""
        pixels = self.height * self.width
        return (self.cameras * OUTPUT_BYTES_PER_PIXEL + RASTER_BYTES_PER_PIXEL) * pixels + \
            BYTES_PER_TILE * self.tiles_x * self.tiles_y

    def chunk_bytes(self, n: int, row_bytes: int, sh_floats: int) -> int:
        per = row_bytes + CHUNK_BYTES_PER_GAUSSIAN + 4 * sh_floats + self.cameras * CHUNK_BYTES_PER_GAUSSIAN_CAMERA
        return n * per


def _plan(store: MappedGaussians, cams: Cameras, tile_size: int, max_memory: int, chunk_size: int | None,
          sh_floats: int) -> _Plan:
    height, width = (int(v) for v in cams.image_size[0])
    base = _Plan(height, width, tile_size, len(cams), 0)
    smallest_chunk = max(1, min(MIN_CHUNK, len(store), chunk_size or MIN_CHUNK))
    # the smallest budget that works holds the fixed buffers, one chunk, and as much again for the kept splats
    smallest = base.fixed_bytes + 2 * base.chunk_bytes(smallest_chunk, store.row_bytes, sh_floats)
    if max_memory < smallest:
        raise ManyviewError(f"a memory budget of {gib(max_memory)} cannot hold one chunk of {smallest_chunk} "
                            f"Gaussians and the {height} x {width} images of {len(cams)} camera(s): the smallest "
                            f"budget that can stream it is {gib(smallest, up=True)} ({budget_option(smallest)})",
                            store.path)
    per = base.chunk_bytes(1, store.row_bytes, sh_floats)
    n = (max_memory - base.fixed_bytes) // 2 // per  # half for the chunk, half for what is kept
    n = min(n, MAX_CHUNK, chunk_size or MAX_CHUNK, max(len(store), 1))
    return _Plan(height, width, tile_size, len(cams), max(int(n), smallest_chunk))


class _Geometry:
    """The four tensors ``_cpu.project`` reads (``_cpu.shade`` reads means, sh_dc, sh_rest)."""

    def __init__(self, **tensors: Tensor):
        self.__dict__.update(tensors)


class _Kept:
    """One camera's records: in memory while the budget allows, else appended to an unnamed temporary file."""

    def __init__(self, tiles_y: int):
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.intersections = 0
        self.spill = None
        self.row_cost = np.zeros(tiles_y + 1)  # difference array of the raster bytes each tile row's band needs

    def add(self, records: np.ndarray, budget: _Budget) -> None:
        ty0, ty1 = records[:, _TY0].astype(np.intp), records[:, _TY1].astype(np.intp)
        cost = RASTER_BYTES_PER_SPLAT + RASTER_BYTES_PER_INTERSECTION * records[:, _NT].astype(np.float64)
        n = len(self.row_cost)
        self.row_cost += np.bincount(ty0, cost, n) - np.bincount(ty1 + 1, cost, n)
        self.count += len(records)
        self.intersections += int(records[:, _NT].astype(np.int64).sum())
        if self.spill is None:
            budget.take(records.nbytes)
            self.parts.append(records)
        else:
            records.tofile(self.spill)

    @property
    def raster_bytes(self) -> int:
        return RASTER_BYTES_PER_SPLAT * self.count + RASTER_BYTES_PER_INTERSECTION * self.intersections

    @property
    def raster_extra(self) -> int:
        """What rasterising the kept records takes beyond the records themselves."""
        return self.raster_bytes - RECORD_BYTES * self.count

    def spill_to_disk(self, budget: _Budget) -> None:
        self.spill = tempfile.TemporaryFile(prefix="manyview-splats-", buffering=0)
        for part in self.parts:
            part.tofile(self.spill)
            budget.give(part.nbytes)
        self.parts = []

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


def _stream(store: MappedGaussians, cams: Cameras, settings: RenderSettings, plan: _Plan, budget: _Budget,
            kept: list[_Kept]) -> None:
    """Pass 1: every chunk projected against every camera; each camera keeps the records of the splats it bins."""
    k1 = (settings.sh_degree + 1) ** 2 - 1
    rest_columns = store.rest_columns[:k1].reshape(-1)
    sh_floats = 3 + 3 * k1
    geometry_columns = np.concatenate([store.means_columns, store.quat_columns, store.scale_columns,
                                       [store.opacity_column]])
    C, W, H, ts = plan.cameras, plan.width, plan.height, plan.tile_size
    sh_columns = np.concatenate([store.dc_columns, rest_columns])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    for start in range(0, len(store), plan.chunk):
        win = store.window(start, start + plan.chunk)
        n = win.shape[0]
        reserve = plan.chunk_bytes(n, store.row_bytes, sh_floats)  # includes the records it may add
        budget.take(reserve)
        geo = np.ascontiguousarray(win[:, geometry_columns])
        store.check_finite(geo, geometry_columns, start)
        proj = _cpu.project(_Geometry(means=t(geo[:, 0:3]), quats=t(geo[:, 3:7]), log_scales=t(geo[:, 7:10]),
                                      opacity_logits=t(geo[:, 10])), cams, settings.mode, settings.near, settings.far)
        means2d, conics, depths, opacities, radii = (_cpu._np(x) for x in (proj.means2d, proj.conics, proj.depths,
                                                                               proj.opacities, proj.radii))
        del proj
        counts = np.empty(C * n, dtype=np.int64)
        rects = np.empty((C * n, 4), dtype=np.int32)
        K.count_tiles(means2d, radii, W, H, ts, counts, rects)
        counts, rects = counts.reshape(C, n), rects.reshape(C, n, 4)
        rows = np.flatnonzero((counts > 0).any(axis=0))  # exactly the Gaussians the rasteriser would bin
        records = []
        if rows.size:
            sh = np.ascontiguousarray(win[rows[:, None], sh_columns[None, :]])
            store.check_finite(sh, sh_columns, start)
            seen = Projected(None, None, None, None, t(radii[:, rows]))
            colors = _cpu.shade(_Geometry(means=t(geo[rows, 0:3]), sh_dc=t(sh[:, :3]).reshape(-1, 1, 3),
                                          sh_rest=t(sh[:, 3:]).reshape(len(rows), k1, 3)),
                                cams, settings.sh_degree, seen).numpy()
            del sh
            for c in range(C):
                mine = np.flatnonzero(counts[c, rows] > 0)
                g = rows[mine]
                rec = np.empty((len(g), RECORD_FLOATS), dtype=np.float32)
                rec[:, _M2D:_M2D + 2] = means2d[c, g]
                rec[:, _CON:_CON + 3] = conics[c, g]
                rec[:, _DEP] = depths[c, g]
                rec[:, _OPA] = opacities[c, g]
                rec[:, _RAD:_RAD + 2] = radii[c, g]
                rec[:, _COL:_COL + 3] = colors[c, mine]
                rec[:, _TY0] = rects[c, g, 2]
                rec[:, _TY1] = rects[c, g, 3]
                rec[:, _NT] = counts[c, g]
                records.append(rec)
        del win, geo, means2d, conics, depths, opacities, radii, counts, rects
        budget.give(reserve)
        for k, rec in zip(kept, records):
            k.add(rec, budget)
        del records
        # keep in memory only while every camera can still be rasterised, and the next chunk streamed, within the
        # budget; past that, spill every camera's records to disk and rasterise them in bands
        in_memory = [k for k in kept if k.spill is None]
        if in_memory and budget.used + reserve + max(k.raster_extra for k in kept) > budget.limit:
            for k in in_memory:
                k.spill_to_disk(budget)


def _rasterize(parts: list[np.ndarray], plan: _Plan, settings: RenderSettings) -> tuple[Tensor, Tensor]:
    """Records -> accumulated (1, H, W, 4) colour and depth, alpha (1, H, W), by the CPU backend's rasteriser."""
    if not any(len(p) for p in parts):  # nothing in view: what rasterising no splat accumulates
        parts.clear()
        return torch.zeros(1, plan.height, plan.width, 4), torch.zeros(1, plan.height, plan.width)
    rec = np.concatenate(parts) if len(parts) != 1 else parts[0]
    parts.clear()
    field = lambda a, b: torch.from_numpy(np.ascontiguousarray(rec[:, a:b]))[None]
    proj = Projected(means2d=field(_M2D, _M2D + 2), conics=field(_CON, _CON + 3), depths=field(_DEP, _DEP + 1)[..., 0],
                     opacities=field(_OPA, _OPA + 1)[..., 0], radii=field(_RAD, _RAD + 2))
    features = torch.cat([field(_COL, _COL + 3), proj.depths[..., None]], dim=-1)
    del rec
    return _cpu.rasterize(proj, features, plan.height, plan.width, settings.tile_size)


def _bands(kept: _Kept, plan: _Plan, free: int, camera: int, path: str) -> tuple[list[tuple[int, int]], int]:
    """Tile-row ranges [r0, r1] whose (over-)estimated raster bytes each fit in ``free`` bytes next to a spill read
    window, and that window's rows: as large as leaves room for the busiest band, between MIN_SPILL_WINDOW_ROWS
    and SPILL_WINDOW_ROWS."""
    cost = np.cumsum(kept.row_cost)[:plan.tiles_y]
    worst = int(np.ceil(cost.max())) if len(cost) else 0
    smallest_window = RECORD_BYTES * MIN_SPILL_WINDOW_ROWS
    if worst > free - smallest_window:
        need = plan.fixed_bytes + smallest_window + worst
        raise ManyviewError(f"camera {camera}: one band of {plan.tile_size} pixel rows needs {gib(worst, up=True)} to "
                            f"rasterise; the smallest budget that renders it is {gib(need, up=True)} "
                            f"({budget_option(need)})", path)
    window_rows = int(np.clip(min(free // 16, free - worst) // RECORD_BYTES, MIN_SPILL_WINDOW_ROWS,
                              SPILL_WINDOW_ROWS))
    room = free - RECORD_BYTES * window_rows
    bands, r0, acc = [], 0, 0.0
    for r in range(plan.tiles_y):
        if r > r0 and acc + cost[r] > room:
            bands.append((r0, r - 1))
            r0, acc = r, 0.0
        acc += cost[r]
    bands.append((r0, plan.tiles_y - 1))
    return bands, window_rows


def _render_camera(kept: _Kept, plan: _Plan, settings: RenderSettings, budget: _Budget, camera: int,
                   path: str) -> tuple[Tensor, Tensor, int]:
    """Pass 2 for one camera: accumulated features (1, H, W, 4), alpha (1, H, W), number of bands."""
    if kept.spill is None:
        budget.take(kept.raster_extra)  # the records are already counted
        accum, alpha = _rasterize(kept.parts, plan, settings)
        budget.give(kept.raster_bytes)
        return accum, alpha, 1
    bands, window_rows = _bands(kept, plan, budget.limit - budget.used, camera, path)
    window = RECORD_BYTES * window_rows
    accum = torch.zeros(1, plan.height, plan.width, 4)
    alpha = torch.zeros(1, plan.height, plan.width)
    for r0, r1 in bands:
        y0, y1 = r0 * plan.tile_size, min((r1 + 1) * plan.tile_size, plan.height)
        parts, count, isect = [], 0, 0
        budget.take(window)
        kept.spill.seek(0)
        while True:
            rec = np.fromfile(kept.spill, dtype=np.float32, count=window_rows * RECORD_FLOATS)
            if rec.size == 0:
                break
            rec = rec.reshape(-1, RECORD_FLOATS)
            part = rec[(rec[:, _TY0] <= r1) & (rec[:, _TY1] >= r0)]
            parts.append(part)
            count, isect = count + len(part), isect + int(part[:, _NT].astype(np.int64).sum())
            budget.take(part.nbytes)
        budget.give(window)
        band_bytes = RASTER_BYTES_PER_SPLAT * count + RASTER_BYTES_PER_INTERSECTION * isect
        budget.take(band_bytes - RECORD_BYTES * count)
        if count:
            a, al = _rasterize(parts, plan, settings)
            accum[:, y0:y1], alpha[:, y0:y1] = a[:, y0:y1], al[:, y0:y1]
        budget.give(band_bytes)
    return accum, alpha, len(bands)


def render_out_of_core(store: MappedGaussians, cameras: Cameras, background: Tensor | None = None,
                       sh_degree: int | None = None, mode: str = "classic", near: float = 0.01, far: float = 1e10,
                       tile_size: int = 16, max_memory: int | None = None,
                       chunk_size: int | None = None) -> StreamedRender:
    """Render the Gaussians of ``store`` from ``cameras`` (one image size) within ``max_memory`` bytes (default:
    :func:`default_max_memory`), streaming the file in chunks of at most ``chunk_size`` Gaussians (default: as the
    budget allows, up to 2^20). Equals ``render(store.read(), cameras, ..., backend="cpu")``; no gradients."""
    max_memory = default_max_memory() if max_memory is None else int(max_memory)
    stored = store.sh_degree
    sh_degree = stored if sh_degree is None else sh_degree
    if not 0 <= sh_degree <= stored:
        raise ManyviewError(f"sh_degree {sh_degree} is not available: the Gaussians store degree {stored}")
    if tile_size > K.MAX_TILE:
        raise ManyviewError(f"the cpu render backend supports tile_size <= {K.MAX_TILE}, got {tile_size}")
    if chunk_size is not None and chunk_size < 1:
        raise ManyviewError(f"chunk_size must be positive, got {chunk_size}")
    settings = RenderSettings(sh_degree, mode, near, far, tile_size)
    cams = _flat_cameras(cameras).to(torch.float32)  # what the cpu backend computes in
    background = _per_camera_background(background, len(cams), torch.device("cpu"))
    plan = _plan(store, cams, tile_size, max_memory, chunk_size, 3 * (sh_degree + 1) ** 2)
    budget = _Budget(max_memory)
    budget.take(plan.fixed_bytes)
    kept = [_Kept(plan.tiles_y) for _ in range(len(cams))]
    rgb, alpha, depth, bands = [], [], [], []
    try:
        with torch.no_grad():
            _stream(store, cams, settings, plan, budget, kept)
            for c, k in enumerate(kept):
                accum, a, n_bands = _render_camera(k, plan, settings, budget, c, store.path)
                k.close()
                empty = Projected(*(torch.zeros(1, 0, d) for d in (2, 3)), torch.zeros(1, 0), torch.zeros(1, 0),
                                  torch.zeros(1, 0, 2))
                out = composite(accum, a, empty, None if background is None else background[c:c + 1])
                rgb.append(out.rgb)
                alpha.append(out.alpha)
                depth.append(out.depth)
                bands.append(n_bands)
    finally:
        for k in kept:
            k.close()
    return StreamedRender(torch.cat(rgb), torch.cat(alpha), torch.cat(depth), tuple(k.count for k in kept),
                          tuple(bands), plan.chunk, max_memory, budget.peak)


__all__ = ["StreamedRender", "default_max_memory", "render_out_of_core"]
