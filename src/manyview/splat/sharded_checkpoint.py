"""Checkpoints of the sharded splat trainer through torch.distributed.checkpoint (DCP), resumable with any number
of processes.

A checkpoint folder ``checkpoints/step_NNNNNN/`` written by K ranks holds

    sharded/                  DCP: .metadata and one file per rank with its rows of every per-Gaussian tensor
                              (``gaussians.<name>``, Adam's ``optimizer.<name>.exp_avg`` / ``.exp_avg_sq``,
                              ``strategy.grad2d`` / ``.count``) and the Adam step counts
    state.pt, views.safetensors   as one process writes them (step, view order, RNG states, history; per-view
                              parameters), written by rank 0

It is built under a temporary name (rank 0 makes it and tells the others) and renamed into place once every rank
has written its part, so an interrupted save leaves the previous checkpoint. The ranks must share the file system
of the output folder. On resume with K' ranks, each rank allocates its ``chunk_sizes`` block of every tensor in
the new layout and DCP reads the rows that fall into it from whichever files hold them (DCP's resharding), so a
run saved with 4 ranks resumes with 2, or 1, exactly. A checkpoint written by one process (``manyview splat``
without torchrun: safetensors of the whole set) is read by every rank, which keeps its block.

Devices: DCP writes the tensors' values, not where they lived, so a checkpoint of CUDA ranks (NCCL) resumes on CPU
ranks (gloo) and the other way round: each rank allocates what it reads on its mesh's device.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory
from manyview.splat.gaussians import PARAMETER_NAMES
from manyview.splat.sharded import _mesh_device, chunk_sizes, shard_rows, wrap_rows
from manyview.splat.trainer import CHECKPOINT_DIR, SHARDED_STATE_DIR


def _broadcast_path(path: Path | None, group, device: torch.device) -> Path:
    holder = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, src=dist.get_global_rank(group, 0), group=group,
                               device=device if device.type == "cuda" else None)  # NCCL: through the GPU
    return Path(holder[0])


def _state_dict(trainer) -> dict[str, torch.Tensor]:
    """Every per-Gaussian tensor as a DTensor (Shard(0)), and the Adam step counts (the same on every rank)."""
    mesh, total = trainer.mesh, len(trainer.params["means"])
    sd = {f"gaussians.{n}": p.detach() for n, p in trainer.params.items()}
    for name, opt in trainer.optimizers.items():
        for key, value in opt.state.get(trainer.params[name], {}).items():
            sd[f"optimizer.{name}.{key}"] = value.detach() if isinstance(value, DTensor) else torch.as_tensor(value)
    for key, value in trainer.strategy_state.items():
        sd[f"strategy.{key}"] = wrap_rows(value, mesh, total)
    return sd


def save(trainer) -> Path:
    """Write ``trainer``'s checkpoint (every rank calls this), then drop the older ones. Returns its path."""
    mesh = trainer.mesh
    group, rank = mesh.get_group(), mesh.get_local_rank()
    path = trainer.out_dir / CHECKPOINT_DIR / f"step_{trainer.step:06d}"
    state = _state_dict(trainer)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_directory(path)) if rank == 0 else None
        tmp = _broadcast_path(tmp, group, _mesh_device(mesh))
        dcp.save(state, checkpoint_id=tmp / SHARDED_STATE_DIR)  # returns once every rank's part is written
        if rank == 0:
            trainer._write_run_state(tmp)
    dist.barrier(group=group)  # renamed into place
    if rank == 0:
        for old in trainer.checkpoint_dirs():
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=group)
    return path


def load(trainer, path=None) -> int:
    """Restore ``trainer`` (every rank calls this) from ``path`` (default: the latest checkpoint), written by any
    number of processes; returns the restored step. Nothing changes unless the checkpoint fits the run."""
    from manyview.io.tensor_files import read_safetensors

    path, damaged = trainer._checkpoint_to_load(path)
    folder = path / SHARDED_STATE_DIR
    mesh = trainer.mesh
    device = _mesh_device(mesh)
    run, view_state = trainer._read_run_state(path, damaged)
    if not folder.is_dir():  # one process wrote it: every rank reads the whole and keeps its block
        files = [path / f"{n}.safetensors" for n in ("gaussians", "optimizer", "strategy")]
        for file in files:
            if not file.is_file():
                raise damaged(file, "this file of the checkpoint is missing")
        try:
            tensors, moments, strategy = (read_safetensors(f)[0] for f in files)
        except ManyviewError as exc:
            raise damaged(Path(exc.path) if exc.path else path, exc.message) from None
        _check(trainer, {n: tuple(t.shape) for n, t in tensors.items()}, damaged, path / "gaussians.safetensors",
               path)
        state = {f"gaussians.{n}": shard_rows(t, mesh) for n, t in tensors.items()}
        state.update({f"optimizer.{k}": (t.to(device, copy=True) if t.dim() == 0 else shard_rows(t, mesh))
                      for k, t in moments.items()})
        state.update({f"strategy.{k}": shard_rows(t, mesh) for k, t in strategy.items()})
    else:
        try:
            everything = dcp.FileSystemReader(str(folder)).read_metadata()
            metadata = everything.state_dict_metadata
            files = sorted({item.relative_path for item in (everything.storage_data or {}).values()})
        except (Exception, dcp.CheckpointException) as exc:  # several types for a missing or truncated .metadata
            raise damaged(folder, f"its torch.distributed.checkpoint metadata cannot be read ({_cause(exc)})")
        for name in files:  # one per rank that saved
            if not (folder / name).is_file():
                raise damaged(folder / name, "this file of the checkpoint is missing")
        shapes = {k.split(".", 1)[1]: tuple(m.size) for k, m in metadata.items() if k.startswith("gaussians.")
                  and hasattr(m, "size")}
        _check(trainer, shapes, damaged, folder, path)
        total = shapes["means"][0]
        rows = chunk_sizes(total, mesh.size())[mesh.get_local_rank()]
        state = {}
        for key, meta in metadata.items():
            if not hasattr(meta, "size"):
                continue
            dtype = meta.properties.dtype
            if len(meta.size) and meta.size[0] == total and not key.endswith(".step"):
                state[key] = wrap_rows(torch.empty(rows, *meta.size[1:], dtype=dtype, device=device), mesh, total)
            else:
                state[key] = torch.empty(tuple(meta.size), dtype=dtype, device=device)
        try:
            dcp.load(state, checkpoint_id=str(folder))
        except (Exception, dcp.CheckpointException) as exc:  # a rank's file missing or truncated
            raise damaged(folder, f"torch.distributed.checkpoint cannot read it ({_cause(exc)})") from None
    _apply(trainer, state)
    trainer._apply_run_state(run, view_state)
    return trainer.step


def _cause(exc: BaseException) -> str:
    """One line for what DCP raised (a CheckpointException wraps each rank's own exception)."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, wrapped = next(iter(failures.items()))
        exc = wrapped[0] if isinstance(wrapped, tuple) and wrapped else getattr(wrapped, "exc", wrapped)
        return f"rank {rank}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _check(trainer, shapes: dict[str, tuple], damaged, file: Path, path: Path) -> None:
    missing = [n for n in PARAMETER_NAMES if n not in shapes]
    if missing or len({shapes[n][0] for n in PARAMETER_NAMES}) != 1:
        raise damaged(file, f"not a set of Gaussians (missing {missing})" if missing
                      else "the Gaussian parameters disagree in their count")
    rest = shapes["sh_rest"]
    trainer._check_sh_degree(math.isqrt(rest[1] + 1) - 1 if len(rest) == 3 else -1, path)


def _apply(trainer, state: dict[str, torch.Tensor]) -> None:
    trainer.params = {n: torch.nn.Parameter(state[f"gaussians.{n}"]) for n in PARAMETER_NAMES}
    for name, opt in trainer.optimizers.items():
        opt.param_groups[0]["params"] = [trainer.params[name]]
        opt.state.clear()
        prefix = f"optimizer.{name}."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # on the mesh's device
        if own:
            opt.state[trainer.params[name]] = own
    trainer.strategy_state = {k[len("strategy."):]: v.to_local().clone() for k, v in state.items()
                              if k.startswith("strategy.")}


__all__ = ["load", "save"]
