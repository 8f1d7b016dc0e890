"""3DGS densification on Gaussians sharded across processes: :class:`~manyview.splat.strategy.DensifyStrategy`'s
rules and schedule applied per shard, in the single-process order.

Parameters are ``nn.Parameter`` DTensors ``Shard(0)`` in the :func:`~manyview.splat.sharded.chunk_sizes` layout,
one Adam per name (moments DTensors sharded alike). Every rule is per Gaussian (a mean projected gradient above a
threshold, a scale, an opacity), so each rank decides for its own rows with the strategy's own functions
(``grow_masks``, ``split_offsets``, ``children``, ``prune_mask``). What the ranks share:

* **the split noise**: one process draws ``randn(2, S, 3)`` for its S split Gaussians in their global order; here
  every rank draws the same ``randn(2, S_total, 3)`` from its copy of the generator (kept in step on every rank)
  and takes the columns of its own split Gaussians (an all-gather of the counts says where they start);
* **the order**: one process builds ``[kept, clones, first children, second children]``, each in global order.
  Appending a rank's new rows to its own shard would interleave them differently, and the next split would then
  draw another Gaussian's noise; so :func:`regroup` lays the four segments out segment-major, rank-minor (the
  single-process order exactly) and into the ``chunk_sizes`` layout in one all-to-all, Adam moments alongside.
  Rows that change rank: about N (K - 1)(K + 2) / (2K) for N new rows (rank r's kept rows shift by r N / K,
  and the new rows go to the end of the global order);
* **pruning** filters every shard and rebalances (:func:`~manyview.splat.sharded.filter_rows`, order kept).

So K processes hold, after any number of steps, the Gaussians of one process in the same order (up to float
rounding of the render's sums). The shards never drift apart: every change of sizes is followed by the layout
of ``chunk_sizes`` (shards within one row of each other), because DTensor's reductions and gathers are only
correct in that layout (see :mod:`manyview.splat.sharded`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from manyview.splat.sharded import chunk_sizes, filter_rows, wrap_rows
from manyview.splat.strategy import DensifyStrategy, accumulate_grad2d
from manyview.splat.types import RenderOutput

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


def _all_gather_ints(values: Sequence[int], mesh: DeviceMesh, device: torch.device) -> list[list[int]]:
    mine = torch.tensor(list(values), dtype=torch.int64, device=device)
    parts = [torch.zeros_like(mine) for _ in range(mesh.size())]
    dist.all_gather(parts, mine, group=mesh.get_group())
    return [p.tolist() for p in parts]


def regroup(segments: Sequence[Sequence[Tensor]], mesh: DeviceMesh) -> list[DTensor]:
    """``segments[t][s]``: this rank's rows of segment ``s`` of tensor ``t`` (every tensor with the same rows per
    segment) -> one DTensor per tensor in the ``chunk_sizes`` layout, global order segment-major, then rank,
    then row. One all-gather of the segment sizes and one all-to-all per dtype; rows that stay on their rank
    do not travel. Not differentiable."""
    k, rank = mesh.size(), mesh.get_local_rank()
    device = segments[0][0].device
    mine = [seg.shape[0] for seg in segments[0]]
    sizes = _all_gather_ints(mine, mesh, device)  # [rank][segment]
    starts = [[0] * len(mine) for _ in range(k)]
    total = 0
    for s in range(len(mine)):
        for q in range(k):
            starts[q][s] = total
            total += sizes[q][s]
    target = chunk_sizes(total, k)
    lo = sum(target[:rank])
    hi = lo + target[rank]

    def positions(q: int, a: int = 0, b: int = total) -> Tensor:
        """Global positions of rank q's rows within [a, b), ascending (segments are in global order)."""
        spans = [(max(a, starts[q][s]), min(b, starts[q][s] + sizes[q][s])) for s in range(len(mine))]
        parts = [torch.arange(lo_, hi_, device=device) for lo_, hi_ in spans if hi_ > lo_]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)

    ends = torch.tensor(list(accumulate(target)), dtype=torch.int64, device=device)
    mine_pos = positions(rank)  # in the order of the local concatenation of the segments
    order = torch.argsort(mine_pos)
    dest = torch.searchsorted(ends, mine_pos[order], right=True)
    send = torch.bincount(dest, minlength=k).tolist()
    arrivals = [positions(q, lo, hi) for q in range(k)]
    recv = [a.shape[0] for a in arrivals]
    place = torch.argsort(torch.cat(arrivals))
    out: dict[int, Tensor] = {}
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, segs in enumerate(segments):
        by_dtype.setdefault(segs[0].dtype, []).append(i)
    for members in by_dtype.values():  # the tensors travel as columns of one matrix per dtype
        flat = [torch.cat([seg.detach().reshape(seg.shape[0], math.prod(seg.shape[1:])) for seg in segments[i]])
                for i in members]
        widths = [f.shape[1] for f in flat]
        packed = torch.cat(flat, dim=1)[order].contiguous()
        received = packed.new_empty(target[rank], packed.shape[1])
        dist.all_to_all_single(received, packed, recv, send, group=mesh.get_group())
        received = received[place]
        for i, part in zip(members, received.split(widths, dim=1)):
            out[i] = part.reshape(target[rank], *segments[i][0].shape[1:]).contiguous()
    return [wrap_rows(out[i], mesh, total) for i in range(len(segments))]


def _moment_keys(optimizers: Optimizers, params: Params, name: str) -> list[str]:
    """The per-Gaussian entries of ``name``'s optimiser state (Adam: exp_avg, exp_avg_sq; none before a step)."""
    opt = optimizers.get(name)
    state = opt.state.get(params[name], {}) if opt is not None else {}
    return [key for key, value in state.items() if isinstance(value, DTensor)]


def _replace(params: Params, optimizers: Optimizers, name: str, value: DTensor, moments: dict[str, DTensor]) -> None:
    """params[name] = a new Parameter holding ``value``; its optimiser's state follows with ``moments``."""
    old = params[name]
    new = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    opt = optimizers.get(name)
    if opt is not None:
        for group in opt.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = opt.state.pop(old, None)
        if state is not None:
            state.update(moments)
            opt.state[new] = state
    params[name] = new


@torch.no_grad()
def step_post_backward(strategy: DensifyStrategy, params: Params, optimizers: Optimizers, state: dict[str, Tensor],
                       step: int, out: RenderOutput, scene_scale: float = 1.0,
                       generator: torch.Generator | None = None, scene_center: Tensor | None = None) -> dict[str, int]:
    """:meth:`DensifyStrategy.step_post_backward` on sharded parameters: ``out`` is the step's sharded render
    (``means2d.retain_grad()`` called before the backward), ``state`` this rank's statistics (plain tensors of its
    rows). Every rank must call it with the same step; the report's counts are global."""
    report = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
    if strategy.accumulates(step):
        grad, radii = out.means2d.grad, out.radii
        if grad is None:
            raise RuntimeError("means2d has no gradient: call out.means2d.retain_grad() before loss.backward()")
        local = lambda t: t.to_local() if isinstance(t, DTensor) else t
        h, w = out.rgb.shape[-2:]
        accumulate_grad2d(state, local(grad), local(radii), w, h, out.means2d.shape[0])
    if strategy.refines(step):
        report.update(_refine(strategy, params, optimizers, state, step, scene_scale, generator, scene_center))
    if strategy.resets(step):
        value = strategy.reset_value()
        p = params["opacity_logits"]
        clamped = wrap_rows(p.to_local().clamp(max=value), p.device_mesh, p.shape[0])
        zeros = {key: wrap_rows(torch.zeros_like(p.to_local()), p.device_mesh, p.shape[0])
                 for key in _moment_keys(optimizers, params, "opacity_logits")}
        _replace(params, optimizers, "opacity_logits", clamped, zeros)
        report["reset"] = 1
    return report


def _refine(strategy: DensifyStrategy, params: Params, optimizers: Optimizers, state: dict[str, Tensor], step: int,
            scene_scale: float, generator, scene_center: Tensor | None) -> dict[str, int]:
    mesh = params["means"].device_mesh
    rank = mesh.get_local_rank()
    local = {name: p.to_local() for name, p in params.items()}
    device = local["means"].device
    clone, split = strategy.grow_masks(local, state, scene_scale)
    n_clone, n_split = int(clone.sum()), int(split.sum())
    counts = _all_gather_ints([n_clone, n_split], mesh, device)
    total_split = sum(c[1] for c in counts)
    first = sum(c[1] for c in counts[:rank])
    # drawn where the generator lives (the trainer's: the CPU, on any device), so every device draws the same
    where = generator.device if generator is not None else device
    noise = torch.randn((2, total_split, 3), generator=generator, device=where,
                        dtype=local["log_scales"].dtype).to(device)
    offsets = strategy.split_offsets(local, split, noise[:, first:first + n_split])
    keep = ~split

    names, segments, moment_slots = [], [], []
    for name, p in local.items():
        names.append(name)
        segments.append([p[keep], p[clone], *strategy.children(name, p, split, offsets)])
    opt_state = {}
    for name in local:
        opt = optimizers.get(name)
        for key in _moment_keys(optimizers, params, name):
            m = opt.state[params[name]][key].to_local()
            zeros = lambda n: m.new_zeros((n, *m.shape[1:]))
            moment_slots.append((name, key))
            segments.append([m[keep], zeros(n_clone), zeros(n_split), zeros(n_split)])
    grown = regroup(segments, mesh)
    for name in names:
        opt_state[name] = {}
    for (name, key), value in zip(moment_slots, grown[len(names):]):
        opt_state[name][key] = value
    for name, value in zip(names, grown):
        _replace(params, optimizers, name, value, opt_state[name])

    local = {name: p.to_local() for name, p in params.items()}
    prune = strategy.prune_mask(local, step, scene_scale, scene_center)
    kept = filter_rows([params[n] for n in names] + [optimizers[n].state[params[n]][k] for n, k in moment_slots],
                       ~prune)
    opt_state = {name: {} for name in names}
    for (name, key), value in zip(moment_slots, kept[len(names):]):
        opt_state[name][key] = value
    for name, value in zip(names, kept):
        _replace(params, optimizers, name, value, opt_state[name])
    pruned = torch.tensor([int(prune.sum())], dtype=torch.int64, device=device)
    dist.all_reduce(pruned, group=mesh.get_group())
    n = params["means"].to_local().shape[0]
    state["grad2d"] = torch.zeros(n, device=state["grad2d"].device)
    state["count"] = torch.zeros(n, device=state["count"].device)
    return {"cloned": sum(c[0] for c in counts), "split": total_split, "pruned": int(pruned)}


__all__ = ["regroup", "step_post_backward"]
