"""render() on Gaussians sharded across processes: exact, differentiable, behind the same public call.

Ownership is by camera, as in gsplat's distributed mode: the batch of C cameras (the same on every rank) is split
into contiguous blocks in DTensor's ``Shard(0)`` layout (:func:`~manyview.splat.sharded.chunk_sizes`), and rank q
rasterises block q. Per render:

1. every rank checks that all ranks render the same cameras, background and settings (one small all-gather;
   a mismatch is a ``ManyviewError`` naming the rank);
2. each rank projects and shades its own Gaussians against every camera (the backend's ``project`` / ``shade``);
3. the visible camera-Gaussian pairs (radius > 0) travel to the rank that owns their camera, 12 numbers each
   (2D mean, conic, depth, opacity, colour, radii), by an all-to-all inside an autograd Function whose backward
   is the reverse all-to-all, so gradients return to the rank that owns each Gaussian;
4. the owner lays the received pairs of each camera out in global Gaussian order (rank-major, as the shards are)
   and rasterises them with the backend's own ``rasterize``, which sorts all of them by depth together: the
   compositing order across ranks is the single-device order, ties included.

Culled pairs never travel, so a step exchanges (visible pairs) x 12 numbers forward and the same backward.
Outputs of :class:`ShardedRender` are DTensors: ``rgb`` / ``alpha`` / ``depth`` (C, ...) ``Shard(0)`` over the
cameras (rank q holds its block), ``means2d`` / ``radii`` (C, P, 2) ``Shard(1)`` over the Gaussians, like the
store (``means2d.retain_grad()`` collects each rank's own densification statistics). Every rank must call
``render`` and, when gradients are recorded, ``backward`` the same number of times: the backward exchanges too.
Cameras get no gradient here (each rank would hold only its part of it); the reference backend's camera gradient
is a single-process feature.
:func:`render_shard` is the same on plain per-rank tensors of any layout (no DTensors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields

import torch
import torch.distributed as dist
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat.backend import Backend, RenderSettings, StagedBackend, composite
from manyview.splat.gaussians import PARAMETER_NAMES, Gaussians, GaussianStore
from manyview.splat.sharded import chunk_sizes, wrap_rows
from manyview.splat.types import Projected, RenderOutput

PAIR_FIELDS = 12  # means2d 2, conics 3, depth 1, opacity 1, colour 3, radii 2
Move = Callable[[Gaussians], Gaussians]  # what one camera sees of this rank's Gaussians (see ShardedRender.render)

_stats: dict[str, int] | None = None


@contextlib.contextmanager
def exchange_stats() -> Iterator[dict[str, int]]:
    """Count what this rank's sharded renders exchange: ``pairs_sent`` / ``pairs_received`` (visible camera-Gaussian
    pairs in the forward, its own included) and ``bytes_sent`` / ``bytes_received`` (payload to and from other
    ranks, forward and backward together)."""
    global _stats
    previous, _stats = _stats, {"pairs_sent": 0, "pairs_received": 0, "bytes_sent": 0, "bytes_received": 0}
    try:
        yield _stats
    finally:
        _stats = previous


def _count(key: str, value: int) -> None:
    if _stats is not None:
        _stats[key] += value


def camera_block(num_cameras: int, world: int, rank: int) -> tuple[int, int]:
    """The cameras [start, stop) that ``rank`` rasterises."""
    sizes = chunk_sizes(num_cameras, world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


# ------------------------------------------------------------------------------------------------ exchange
class _AllToAll(torch.autograd.Function):
    """Rows of ``x`` (split ``send_rows`` per destination) -> rows from every rank (``recv_rows`` per source);
    the backward sends the gradient rows back the same way."""

    @staticmethod
    def forward(ctx, x, recv_rows, send_rows, group):
        out = x.new_empty(sum(recv_rows), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv_rows, send_rows, group=group)
        ctx.args = (recv_rows, send_rows, group)
        _count_bytes(x, send_rows, recv_rows, group)
        return out

    @staticmethod
    def backward(ctx, grad):
        recv_rows, send_rows, group = ctx.args
        out = grad.new_empty(sum(send_rows), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), send_rows, recv_rows, group=group)
        _count_bytes(grad, recv_rows, send_rows, group)
        return out, None, None, None


def _count_bytes(x: Tensor, send_rows: list[int], recv_rows: list[int], group) -> None:
    """Bytes that cross to and from other ranks (a rank's rows for itself stay in memory)."""
    if _stats is not None:
        row = x[0].numel() * x.element_size() if x.shape[0] else 0
        me = dist.get_rank(group)
        _stats["bytes_sent"] += (sum(send_rows) - send_rows[me]) * row
        _stats["bytes_received"] += (sum(recv_rows) - recv_rows[me]) * row


def _pack(proj: Projected, colors: Tensor) -> tuple[Tensor, Tensor]:
    """The visible pairs, camera-major then Gaussian order -> (n, PAIR_FIELDS) rows and per-camera counts (C,)."""
    visible = (proj.radii > 0).all(-1)  # (C, P)
    cam, gid = visible.nonzero(as_tuple=True)
    rows = torch.cat([proj.means2d[cam, gid], proj.conics[cam, gid], proj.depths[cam, gid, None],
                      proj.opacities[cam, gid, None], colors[cam, gid].to(proj.means2d),
                      proj.radii[cam, gid].detach().to(proj.means2d)], dim=-1)
    return rows, visible.sum(1)


def _unpack(rows: Tensor, recv_counts: Tensor) -> tuple[Projected, Tensor]:
    """Rows received from every rank (rank-major, then camera, then Gaussian) and ``recv_counts`` (K, C_own) ->
    the owner's :class:`Projected` (C_own, M) and features (C_own, M, 4), each camera's pairs in rank-major order
    (= global Gaussian order) and padded to the largest count M with culled (radius 0) entries."""
    k, c_own = recv_counts.shape
    per_camera = recv_counts.sum(0)
    m = int(per_camera.max()) if c_own else 0
    group_sizes = recv_counts.reshape(-1)  # (K * C_own,) in arrival order
    group = torch.repeat_interleave(torch.arange(k * c_own, device=rows.device), group_sizes)
    group_start = torch.cumsum(group_sizes, 0) - group_sizes
    within = torch.arange(rows.shape[0], device=rows.device) - group_start[group]
    before = (torch.cumsum(recv_counts, 0) - recv_counts).reshape(-1)  # pairs of lower ranks, same camera
    slot = (group % max(c_own, 1)) * m + before[group] + within
    dense = rows.new_zeros(c_own * m, rows.shape[1]).index_copy(0, slot, rows).reshape(c_own, m, rows.shape[1])
    proj = Projected(means2d=dense[..., 0:2], conics=dense[..., 2:5], depths=dense[..., 5],
                     opacities=dense[..., 6], radii=dense[..., 10:12].detach())
    features = torch.cat([dense[..., 7:10], dense[..., 5:6]], dim=-1)
    return proj, features


def exchange(proj: Projected, colors: Tensor, group=None) -> tuple[Projected, Tensor, Tensor]:
    """Send each camera's visible pairs to the rank that owns the camera. Returns the owner's :class:`Projected`
    and features for its block of cameras, and the received rows (autograd connects them to every output)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    num_cameras = proj.radii.shape[0]
    blocks = chunk_sizes(num_cameras, world)
    rows, counts = _pack(proj, colors)
    recv_counts = counts.new_empty(world * blocks[rank])
    dist.all_to_all_single(recv_counts, counts.contiguous(), [blocks[rank]] * world, blocks, group=group)
    recv_counts = recv_counts.reshape(world, blocks[rank])
    send_rows = [int(s.sum()) for s in counts.split(blocks)]
    recv_rows = [int(v) for v in recv_counts.sum(1).tolist()]
    received = _AllToAll.apply(rows, recv_rows, send_rows, group)
    _count("pairs_sent", rows.shape[0])
    _count("pairs_received", received.shape[0])
    owned, features = _unpack(received, recv_counts)
    return owned, features, received


# ------------------------------------------------------------------------------------------------ checks
def _fingerprint(t: Tensor | None) -> list[float]:
    if t is None:
        return [-1.0, 0.0]
    t = t.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    weights = torch.linspace(1.0, 2.0, t.numel(), dtype=torch.float64)
    return [float(t.numel()), float((t * weights).sum())]


def check_same_on_every_rank(cameras: Cameras, background: Tensor | None, settings: RenderSettings,
                             records_grad: bool, device: torch.device, group=None) -> None:
    """Raise ``ManyviewError`` on every rank, naming the first rank that differs from rank 0, unless all ranks
    render the same cameras, background and settings and all record gradients or none does."""
    checks = [
        ("the number of cameras", [float(len(cameras))]),
        ("the image size", _fingerprint(cameras.image_size)),
        ("the camera intrinsics", _fingerprint(cameras.fxfycxcy)),
        ("the camera poses", _fingerprint(cameras.c2w)),
        ("the background", _fingerprint(background)),
        ("the render settings", [float(settings.sh_degree), float(settings.mode == "antialiased"), settings.near,
                                 settings.far, float(settings.tile_size)]),
        ("whether gradients are recorded (every rank must render, and call backward, alike)",
         [float(records_grad)]),
    ]
    mine = torch.tensor([v for _, values in checks for v in values], dtype=torch.float64, device=device)
    world = dist.get_world_size(group)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    for r in range(1, world):
        same = torch.isclose(everyone[r], everyone[0], rtol=0, atol=0, equal_nan=True).cpu()
        at = 0
        for label, values in checks:
            if not bool(same[at:at + len(values)].all()):
                raise ManyviewError(f"sharded render: rank {r} passed {label} different from rank 0's; every rank "
                                    f"must render the same batch of cameras with the same settings")
            at += len(values)


# ------------------------------------------------------------------------------------------------ render
def _staged(backend: Backend) -> StagedBackend:
    if not isinstance(backend, StagedBackend):
        raise ManyviewError(f"the {backend.name!r} render backend cannot render sharded Gaussians: it fuses the "
                            f"project / rasterise stages between which the ranks exchange splats; use backend "
                            f"'cpu' or 'reference'")
    return backend


def _project(backend: StagedBackend, local: GaussianStore, cameras: Cameras, settings: RenderSettings,
             lift_means2d: Callable[[Tensor], Tensor] | None, moves: Sequence[Move | None] | None = None
             ) -> tuple[Projected, Tensor]:
    backend.check(local)
    if moves is None:
        g = local.to(dtype=backend.compute_dtype)
        proj = backend.project(g, cameras, settings)
        if lift_means2d is not None:
            proj = Projected(lift_means2d(proj.means2d), proj.conics, proj.depths, proj.opacities, proj.radii)
        return proj, backend.shade(g, cameras, settings, proj)
    # camera c sees moves[c](local): projected and shaded one camera at a time (shading reads the projection's
    # radii only), stacked along C
    parts = []
    for c, move in enumerate(moves):
        g = (local if move is None else move(local)).to(dtype=backend.compute_dtype)
        cam = cameras[c:c + 1]
        p = backend.project(g, cam, settings)
        parts.append((p, backend.shade(g, cam, settings, p)))
    proj = Projected(*(torch.cat([getattr(p, f.name) for p, _ in parts]) for f in fields(Projected)))
    if lift_means2d is not None:
        proj = Projected(lift_means2d(proj.means2d), proj.conics, proj.depths, proj.opacities, proj.radii)
    return proj, torch.cat([c for _, c in parts])


def _rasterize_owned(backend: StagedBackend, proj: Projected, colors: Tensor, cameras: Cameras,
                     background: Tensor | None, settings: RenderSettings, group) -> RenderOutput:
    """Exchange, then rasterise this rank's block of cameras. ``means2d`` / ``radii`` of the result are this
    rank's own (C, P_local, 2) projections."""
    start, stop = camera_block(len(cameras), dist.get_world_size(group), dist.get_rank(group))
    owned, features, received = exchange(proj, colors, group)
    height, width = (int(v) for v in cameras.image_size[0])
    bg = None if background is None else background[start:stop]
    if owned.radii.shape[1]:
        accum, alpha = backend.rasterize(owned, features, height, width, settings)
    else:  # nothing to rasterise (no cameras here, or nothing visible in them): the background alone; the zero
        # term keeps the received rows in the graph, so that this rank's backward joins the reverse exchange
        anchor = received.sum() * 0
        accum = features.new_zeros(stop - start, height, width, 4) + anchor
        alpha = features.new_zeros(stop - start, height, width) + anchor
    out = composite(accum, alpha, owned, bg)
    return RenderOutput(out.rgb, out.alpha, out.depth, proj.means2d, proj.radii)


def _records_grad(local: GaussianStore) -> bool:
    return torch.is_grad_enabled() and any(getattr(local, n).requires_grad for n in PARAMETER_NAMES)


def render_shard(gaussians: GaussianStore, cameras: Cameras, background: Tensor | None, settings: RenderSettings,
                 backend: Backend, group=None) -> RenderOutput:
    """The sharded render on plain tensors: ``gaussians`` are this rank's rows (any number, global order
    rank-major), ``cameras`` (C,) and ``background`` (None or (C, 3)) the same on every rank of ``group``. Returns
    rgb / alpha / depth of this rank's :func:`camera_block` and means2d / radii (C, P_local, 2)."""
    staged = _staged(backend)
    cams = cameras.detach().to(staged.compute_dtype)  # see the module docstring: no camera gradients
    check_same_on_every_rank(cams, background, settings, _records_grad(gaussians), gaussians.means.device, group)
    proj, colors = _project(staged, gaussians, cams, settings, None)
    out = _rasterize_owned(staged, proj, colors, cams, background, settings, group)
    return out.to(staged.output_dtype(gaussians))


class ShardedRender:
    """The :class:`~manyview.splat.backend.Backend` that ``render()`` uses for a store whose tensors are DTensors
    ``Shard(0)`` over a 1-D mesh (such as :class:`~manyview.splat.sharded.ShardedGaussians`), rasterising on each
    rank with the staged backend ``inner``."""

    def __init__(self, inner: Backend):
        self.inner = _staged(inner)
        self.name = f"sharded {inner.name}"

    def render(self, gaussians: GaussianStore, cameras: Cameras, background: Tensor | None,
               settings: RenderSettings, moves: Sequence[Move | None] | None = None) -> RenderOutput:
        """``moves`` (one per camera, or None): camera c sees this rank's Gaussians as ``moves[c]`` maps them
        (a differentiable function of its plain local tensors keeping their number and order, such as a rigid
        motion for pose refinement; None: unmoved), as if each camera rendered its own moved copy; gradients
        reach whatever the moves depend on through every rank's own Gaussians (per rank: a partial sum)."""
        from torch.distributed.tensor import DTensor, Shard

        for name in PARAMETER_NAMES:
            t = getattr(gaussians, name)
            if not isinstance(t, DTensor) or tuple(t.placements) != (Shard(0),) or t.device_mesh.ndim != 1:
                raise ManyviewError(f"sharded render: Gaussians.{name} must be a DTensor sharded Shard(0) on a "
                                    f"1-D mesh like the others")
        mesh, total = gaussians.means.device_mesh, gaussians.means.shape[0]
        group = mesh.get_group()
        local = Gaussians(*(getattr(gaussians, n).to_local() for n in PARAMETER_NAMES))
        staged = self.inner
        cams = cameras.detach().to(staged.compute_dtype)  # see the module docstring: no camera gradients
        check_same_on_every_rank(cams, background, settings, _records_grad(local), local.means.device, group)
        lifted: list[Tensor] = []
        out_dtype = staged.output_dtype(local)

        def lift(means2d: Tensor) -> Tensor:
            # the DTensor returned as means2d sits on the path to the loss, so that its .grad fills (densification):
            # in the output dtype, as the one-process render returns it (the reference computes in float64)
            lifted.append(wrap_rows(means2d.to(out_dtype), mesh, total, dim=1))
            return lifted[0].to_local().to(means2d.dtype)

        if moves is not None and len(moves) != len(cams):
            raise ValueError(f"sharded render: {len(moves)} moves for {len(cams)} cameras")
        proj, colors = _project(staged, local, cams, settings, lift, moves)
        out = _rasterize_owned(staged, proj, colors, cams, background, settings, group).to(out_dtype)
        num_cameras = len(cams)
        by_camera = lambda t: wrap_rows(t, mesh, num_cameras, dim=0)
        return RenderOutput(rgb=by_camera(out.rgb), alpha=by_camera(out.alpha), depth=by_camera(out.depth),
                            means2d=lifted[0], radii=wrap_rows(out.radii, mesh, total, dim=1))


def render_moved(gaussians: GaussianStore, cameras: Cameras, moves: Sequence[Move | None],
                 background: Tensor | None = None, sh_degree: int | None = None, backend: str = "auto"
                 ) -> RenderOutput:
    """:func:`~manyview.splat.render.render` of sharded Gaussians in which camera c sees its own motion of them,
    ``moves[c]`` (see :meth:`ShardedRender.render`): one exchange and rasterisation by camera ownership for the
    whole batch. The trainer's pose refinement: each camera moves the world by its own correction, which one
    process renders as one call per camera; here the ranks still split the batch's cameras between them."""
    from manyview.splat.render import choose_backend, get_backend
    from manyview.splat.sh import degree_from_coefficients

    stored = degree_from_coefficients(gaussians.sh_rest.shape[1] + 1)
    settings = RenderSettings(stored if sh_degree is None else sh_degree)
    if background is not None and background.dim() == 1:
        background = background.expand(len(cameras), 3)
    chosen = ShardedRender(get_backend(choose_backend(gaussians, backend)))
    return chosen.render(gaussians, cameras, background, settings, moves=moves)
