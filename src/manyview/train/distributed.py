"""Process groups and model wrapping: one process, DDP, or FSDP2, chosen by :class:`ParallelConfig`.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them a
run is a single process. ddp/fsdp also run as a world of one (a process group on an in-memory store), which is
how the wrapped code paths are exercised without a launcher.

FSDP2 (``fully_shard``) works on CPU with gloo in torch 2.13: its all-gather and reduce-scatter are available
there, and gradient norms come back as DTensors whose ``full_tensor()`` reduces over the shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.train.config import ParallelConfig


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its device, and whether a process group is in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: no process group (parallel mode "none")
    owns_group: bool  # True when setup() created the group, so teardown() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ManyviewError(f"environment variable {name}={value!r} is not an integer") from None


def setup(parallel: ParallelConfig, device: str = "auto") -> DistEnv:
    """Read the launcher's environment, pick the device and, for ddp/fsdp, join (or create) the process group."""
    rank, world, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ManyviewError("device 'cuda' was asked for but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ManyviewError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices exist")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")

    if parallel.mode == "none":
        if world > 1:
            raise ManyviewError(f"WORLD_SIZE={world} but parallel.mode is 'none': every process would train "
                                f"its own copy; choose 'ddp' or 'fsdp'")
        return DistEnv(0, 1, 0, dev, None, False)

    backend = parallel.backend if parallel.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ManyviewError("backend 'nccl' needs CUDA devices; use 'gloo' on CPU")
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ManyviewError(f"an existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                                f"disagrees with RANK={rank} WORLD_SIZE={world}")
        return DistEnv(rank, world, local_rank, dev, dist.get_backend(), False)
    if world > 1 or "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    else:  # a world of one without a launcher: no rendezvous needed
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistEnv(rank, world, local_rank, dev, backend, True)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def default_shard_units(model: nn.Module) -> list[nn.Module]:
    """The members of every ``nn.ModuleList`` that hold parameters: usually the transformer blocks."""
    units = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units.extend(m for m in module if any(True for _ in m.parameters()))
    return units


def wrap_model(model: nn.Module, env: DistEnv, parallel: ParallelConfig,
               units: Iterable[nn.Module] | None = None) -> nn.Module:
    """Move ``model`` to the device and wrap it for the parallel mode.

    fsdp shards each of ``units`` (default :func:`default_shard_units`) and then the root, so parameters are
    gathered one unit at a time; every rank must hold identical initial weights (seed before building).
    """
    model = model.to(env.device)
    if parallel.mode == "none":
        return model
    if parallel.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if parallel.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        reshard = parallel.fsdp_reshard_after_forward
        for unit in (default_shard_units(model) if units is None else units):
            fully_shard(unit, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        return model
    raise ManyviewError(f"unknown parallel mode {parallel.mode!r}; expected none, ddp or fsdp")


def all_reduce_mean(x: Tensor, env: DistEnv) -> Tensor:
    """Mean over ranks (SUM then divide: gloo has no AVG)."""
    if not env.distributed or env.world_size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / env.world_size


def all_true(flag: bool, env: DistEnv) -> bool:
    """True only if ``flag`` is True on every rank (lets every rank learn that one of them failed)."""
    if not env.distributed or env.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed or env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=env.device if env.backend == "nccl" else None)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed and env.world_size > 1:
        dist.barrier()
