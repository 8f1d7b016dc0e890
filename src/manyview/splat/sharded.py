"""Gaussians sharded across processes: the six parameter tensors as DTensors, ``Shard(0)`` on a 1-D DeviceMesh.

Each rank holds a contiguous block of the Gaussians (global order is rank-major). Because the tensors are DTensors,
ordinary PyTorch runs across the ranks unchanged: ``g.opacities.mean()`` reduces over every shard,
``torch.optim.Adam`` keeps its moments as DTensors sharded alike, ``full_tensor()`` gathers. ``render()`` accepts a
:class:`ShardedGaussians` like any :class:`~manyview.splat.gaussians.GaussianStore`
(:mod:`manyview.splat.distributed_render`).

**Shard sizes.** A DTensor records only its global shape and placements, and torch derives each rank's rows from
them with ``torch.chunk``'s rule (``ceil(P / K)`` rows per rank, the last ranks fewer, possibly none). Local blocks
of any other size can be wrapped with ``DTensor.from_local(shape=...)``, but then reductions, gathers and autograd
silently disagree with the data (measured on torch 2.13 with blocks of 1 and 4 rows: ``mean()`` returned 0.6 for
a mean of 2.0, ``full_tensor()`` returned the wrong rows, and the backward of ``sum()`` broke Adam with a shape
error). Padding every shard to a common capacity keeps the layout even but makes every reduction count the
padding. So a :class:`ShardedGaussians` always holds torch's own layout (:func:`chunk_sizes`), uneven and empty
shards included, and every operation that changes the number of Gaussians per shard (pruning with a mask,
densifying per shard) restores it with an order-preserving all-to-all (:func:`rebalance`), which moves only the
rows that cross a shard boundary: after a prune that removed ``d`` more rows on one rank than on another, about
``d / 2`` rows travel. Optimiser moments go through the same functions (:func:`filter_rows`, :func:`rebalance`)
so that they stay aligned with their Gaussians.

Collectives run on the mesh's process group (gloo on CPU, NCCL on CUDA); every rank must make the same calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from manyview.errors import ManyviewError
from manyview.splat.gaussians import PARAMETER_NAMES, Gaussians, check_shapes
from manyview.splat.sh import degree_from_coefficients, sh_to_rgb


# ------------------------------------------------------------------------------------------------ layout
def chunk_sizes(n: int, k: int) -> list[int]:
    """Rows per rank of ``n`` rows on ``k`` ranks in DTensor's ``Shard(0)`` layout (``torch.chunk``'s rule)."""
    step = -(-n // k) if n else 0
    return [max(0, min(n, step * (r + 1)) - step * r) for r in range(k)]


def gaussian_mesh(device_type: str | None = None) -> DeviceMesh:
    """A 1-D mesh over every process of the default group (started by ``torchrun`` or
    ``torch.distributed.init_process_group``). ``device_type`` defaults to "cuda" for an NCCL group, else "cpu"."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ManyviewError("sharded Gaussians need torch.distributed: launch with torchrun, or call "
                            "torch.distributed.init_process_group first")
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),))


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else \
        torch.device(mesh.device_type)


def _contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(stride))


def wrap_rows(local: Tensor, mesh: DeviceMesh, total: int, dim: int = 0) -> DTensor:
    """This rank's block ``local`` of a tensor with ``total`` entries along ``dim`` -> the DTensor ``Shard(dim)``
    (differentiable; no communication). ``local`` must hold exactly this rank's :func:`chunk_sizes` entries."""
    k, rank = mesh.size(), mesh.get_local_rank()
    expected = chunk_sizes(total, k)[rank]
    if local.shape[dim] != expected:
        raise ValueError(f"rank {rank} holds {local.shape[dim]} rows of {total}, but Shard({dim}) on {k} ranks "
                         f"puts {expected} there")
    shape = list(local.shape)
    shape[dim] = total
    return DTensor.from_local(local, mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                              stride=_contiguous_stride(shape))


def shard_rows(full: Tensor, mesh: DeviceMesh) -> DTensor:
    """Keep this rank's block of ``full`` (the same tensor on every rank, e.g. from one seed): no communication.
    The block is a copy, so ``full`` can be freed; no gradient flows back to it."""
    k, rank = mesh.size(), mesh.get_local_rank()
    sizes = chunk_sizes(full.shape[0], k)
    start = sum(sizes[:rank])
    local = full.detach()[start:start + sizes[rank]].to(_mesh_device(mesh)).clone()
    return wrap_rows(local, mesh, full.shape[0])


def _all_sizes(n: int, mesh: DeviceMesh) -> list[int]:
    """Every rank's ``n`` (one all-gather)."""
    mine = torch.tensor([n], dtype=torch.int64, device=_mesh_device(mesh))
    parts = [torch.zeros_like(mine) for _ in range(mesh.size())]
    dist.all_gather(parts, mine, group=mesh.get_group())
    return [int(p.item()) for p in parts]


def _overlaps(starts: Sequence[int], sizes: Sequence[int], lo: int, hi: int) -> list[int]:
    return [max(0, min(hi, s + n) - max(lo, s)) for s, n in zip(starts, sizes)]


def _prefix(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def rebalance(locals_: Sequence[Tensor], mesh: DeviceMesh) -> list[DTensor]:
    """Row blocks of any size per rank (all tensors of one call with the same number of rows on this rank; global
    order rank-major) -> DTensors in the :func:`chunk_sizes` layout, order kept. Only rows that cross a shard
    boundary travel (one all-gather of the sizes and, when the layout changes, one all-to-all per dtype).
    Not differentiable: for parameters and optimiser state, under ``torch.no_grad``."""
    if not locals_:
        return []
    n = locals_[0].shape[0]
    if any(t.shape[0] != n for t in locals_):
        raise ValueError("rebalance: every tensor needs the same number of rows on this rank")
    k, rank = mesh.size(), mesh.get_local_rank()
    sizes = _all_sizes(n, mesh)
    total = sum(sizes)
    target = chunk_sizes(total, k)
    if sizes == target:
        return [wrap_rows(t.detach(), mesh, total) for t in locals_]
    src_starts, dst_starts = _prefix(sizes), _prefix(target)
    send = _overlaps(dst_starts, target, src_starts[rank], src_starts[rank] + n)
    recv = _overlaps(src_starts, sizes, dst_starts[rank], dst_starts[rank] + target[rank])
    moved: dict[int, Tensor] = {}
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(locals_):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, members in by_dtype.items():  # one exchange per dtype: the tensors travel as columns of one matrix
        flat = [locals_[i].detach().reshape(n, math.prod(locals_[i].shape[1:])) for i in members]
        widths = [f.shape[1] for f in flat]
        packed = torch.cat(flat, dim=1).contiguous()
        out = packed.new_empty(target[rank], packed.shape[1])
        dist.all_to_all_single(out, packed, recv, send, group=mesh.get_group())
        for i, part in zip(members, out.split(widths, dim=1)):
            moved[i] = part.reshape(target[rank], *locals_[i].shape[1:]).contiguous()
    return [wrap_rows(moved[i], mesh, total) for i in range(len(locals_))]


def _local_mask(keep: Tensor, n: int) -> Tensor:
    keep = keep.to_local() if isinstance(keep, DTensor) else keep
    if keep.dtype != torch.bool or keep.shape != (n,):
        raise ValueError(f"a row mask must be a bool tensor of this rank's {n} rows, got {keep.dtype} "
                         f"{tuple(keep.shape)}")
    return keep


def filter_rows(tensors: Sequence[DTensor], keep: Tensor) -> list[DTensor]:
    """Keep the rows where ``keep`` (a bool DTensor sharded alike, or this rank's block of it) is true, per shard,
    then :func:`rebalance`. For an optimiser's moments alongside :meth:`ShardedGaussians.select`."""
    if not tensors:
        return []
    mesh = tensors[0].device_mesh
    mask = _local_mask(keep, tensors[0].to_local().shape[0])
    return rebalance([t.to_local()[mask] for t in tensors], mesh)


# ------------------------------------------------------------------------------------------------ the store
@dataclass(frozen=True, eq=False)
class ShardedGaussians:
    """The six tensors of :class:`~manyview.splat.gaussians.Gaussians` as DTensors ``Shard(0)`` over one 1-D mesh,
    in the :func:`chunk_sizes` layout. Build with :meth:`distribute` (every rank holds the same Gaussians) or
    :meth:`from_local` (each rank brings its own rows)."""

    means: DTensor
    log_scales: DTensor
    quats: DTensor
    opacity_logits: DTensor
    sh_dc: DTensor
    sh_rest: DTensor

    def __post_init__(self):
        mesh = None
        for name in PARAMETER_NAMES:
            t = getattr(self, name)
            if not isinstance(t, DTensor) or tuple(t.placements) != (Shard(0),):
                raise ValueError(f"ShardedGaussians.{name} must be a DTensor with placements (Shard(0),)")
            if mesh is None:
                mesh = t.device_mesh
            elif t.device_mesh != mesh:
                raise ValueError(f"ShardedGaussians.{name} lives on another device mesh than means")
        if mesh.ndim != 1:
            raise ValueError("ShardedGaussians need a 1-D device mesh")
        check_shapes(self, "ShardedGaussians")
        expected = chunk_sizes(len(self), mesh.size())[mesh.get_local_rank()]
        for name in PARAMETER_NAMES:
            if getattr(self, name).to_local().shape[0] != expected:
                raise ValueError(f"ShardedGaussians.{name}: rank {mesh.get_local_rank()} holds "
                                 f"{getattr(self, name).to_local().shape[0]} rows, the Shard(0) layout of "
                                 f"{len(self)} puts {expected} there (use rebalance)")

    # ----------------------------------------------------------------- construction
    @classmethod
    def distribute(cls, gaussians: Gaussians, mesh: DeviceMesh | None = None) -> ShardedGaussians:
        """Every rank passes the same ``gaussians`` and keeps its block (no communication)."""
        mesh = gaussian_mesh() if mesh is None else mesh
        return cls(*(shard_rows(getattr(gaussians, n), mesh) for n in PARAMETER_NAMES))

    @classmethod
    def from_local(cls, gaussians: Gaussians, mesh: DeviceMesh | None = None) -> ShardedGaussians:
        """Each rank passes its own rows (any number, possibly none; global order is rank-major); they are
        rebalanced into the Shard(0) layout."""
        mesh = gaussian_mesh() if mesh is None else mesh
        return cls(*rebalance([getattr(gaussians, n) for n in PARAMETER_NAMES], mesh))

    @classmethod
    def from_dict(cls, params: dict[str, Tensor]) -> ShardedGaussians:
        return cls(**{name: params[name] for name in PARAMETER_NAMES})

    # ----------------------------------------------------------------- views
    @property
    def mesh(self) -> DeviceMesh:
        return self.means.device_mesh

    def __len__(self) -> int:
        """The number of Gaussians on all ranks together."""
        return self.means.shape[0]

    @property
    def shard_sizes(self) -> list[int]:
        return chunk_sizes(len(self), self.mesh.size())

    @property
    def offset(self) -> int:
        """Global index of this rank's first Gaussian."""
        return sum(self.shard_sizes[:self.mesh.get_local_rank()])

    @property
    def sh_degree(self) -> int:
        return degree_from_coefficients(self.sh_rest.shape[1] + 1)

    @property
    def device(self) -> torch.device:
        return self.means.to_local().device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def scales(self) -> DTensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> DTensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> DTensor:
        """(P, 3) view-independent (DC) colour, unclamped."""
        return sh_to_rgb(self.sh_dc[:, 0])

    def local(self) -> Gaussians:
        """This rank's Gaussians as plain tensors; gradients flow back to the DTensors."""
        return Gaussians(*(getattr(self, n).to_local() for n in PARAMETER_NAMES))

    def full(self) -> Gaussians:
        """All Gaussians on every rank (an all-gather per tensor: for small scenes and tests)."""
        return Gaussians(*(getattr(self, n).full_tensor() for n in PARAMETER_NAMES))

    def as_dict(self) -> dict[str, DTensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ----------------------------------------------------------------- new objects
    def replace(self, **changes: DTensor) -> ShardedGaussians:
        return replace(self, **changes)

    def select(self, keep: Tensor) -> ShardedGaussians:
        """The Gaussians where ``keep`` (bool, a DTensor sharded alike such as ``g.opacities > 0.005``, or this
        rank's block) is true, rebalanced. No autograd history (an edit of the parameters)."""
        return ShardedGaussians(*filter_rows([getattr(self, n) for n in PARAMETER_NAMES], keep))

    def per_shard(self, fn: Callable[[Gaussians], Gaussians]) -> ShardedGaussians:
        """Apply ``fn`` to this rank's Gaussians (it may add or remove rows, e.g. clone / split / prune), then
        rebalance. No autograd history."""
        with torch.no_grad():
            out = fn(self.local().detach())
        return ShardedGaussians.from_local(out, self.mesh)

    def to(self, *args, **kwargs) -> ShardedGaussians:
        """``Tensor.to``'s arguments, for a change of dtype; the shards stay on the mesh's devices."""
        moved = [getattr(self, n).to(*args, **kwargs) for n in PARAMETER_NAMES]
        if moved[0].to_local().device != self.device:
            raise ManyviewError("ShardedGaussians.to changes the dtype only; the shards live on the mesh's devices")
        return ShardedGaussians(*moved)

    def detach(self) -> ShardedGaussians:
        return ShardedGaussians(*(getattr(self, n).detach() for n in PARAMETER_NAMES))

    def clone(self) -> ShardedGaussians:
        return ShardedGaussians(*(getattr(self, n).clone() for n in PARAMETER_NAMES))

    def requires_grad_(self, requires_grad: bool = True) -> ShardedGaussians:
        for n in PARAMETER_NAMES:
            getattr(self, n).requires_grad_(requires_grad)
        return self

    def with_sh_degree(self, degree: int) -> ShardedGaussians:
        """Truncate or zero-pad the higher-degree coefficients to ``degree`` (per shard, no communication)."""
        local = self.local().with_sh_degree(degree).sh_rest
        return replace(self, sh_rest=wrap_rows(local, self.mesh, len(self)))

    def __repr__(self) -> str:
        return (f"ShardedGaussians(n={len(self)}, shards={self.shard_sizes}, sh_degree={self.sh_degree}, "
                f"dtype={self.dtype}, device={self.device})")


__all__ = ["ShardedGaussians", "chunk_sizes", "filter_rows", "gaussian_mesh", "rebalance",
           "shard_rows", "wrap_rows"]
