"""Training checkpoints: written atomically, world-size independent weights, exact resume.

Layout of ``out_dir/checkpoints/step_000001000/`` (the step is the number of finished updates)::

    model.safetensors   full (unsharded) model state dict, gathered on rank 0
    optim.pt            full optimizer state keyed by parameter name, the step, the schedule
    rank{r}.pt          per rank: RNG states (torch, CUDA, numpy, python) and the data stream position
    meta.json           step, world size, parallel mode, elapsed time, the run's config

The directory is built under a temporary name and renamed into place once every rank has written its part,
so a crash during a save leaves the previous checkpoints untouched. Everything is read back with
``safetensors`` or ``torch.load(weights_only=True)`` (:mod:`manyview.io.tensor_files`); nothing is unpickled. A
damaged file is named, with what to do instead (resume from an earlier checkpoint, or start over).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory
from manyview.io.tensor_files import read_pickle, read_safetensors, sniff_format
from manyview.train.distributed import DistEnv, all_true, barrier, broadcast_object

_NAME = re.compile(r"^step_(\d{9,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary and half-deleted ones are hidden names)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "meta.json").is_file()]
    return [p for _, p in sorted(found)]


def full_model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU on rank 0 (empty dict elsewhere), tied tensors made independent.

    A collective under FSDP (every rank must call it): shards are gathered into full tensors.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not env.is_main:
        return {}
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone().contiguous() if ptr in seen else v.contiguous()  # safetensors refuses shared storage
        seen.add(ptr)
    return out


def capture_rng(device: torch.device) -> dict[str, Any]:
    """RNG states of this process, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_model(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    save_file(state, str(path), metadata={"format": "pt", "step": str(step)})


def save_checkpoint(root: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    env: DistEnv, rank_state: dict[str, Any], meta: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint ``step`` under ``root`` (all ranks call this); returns its final path.

    Collectives (gathering weights and optimizer state) run first on every rank; then each rank writes its
    files into rank 0's temporary directory, and rank 0 renames it into place only if all ranks succeeded.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    root = Path(root)
    final = root / checkpoint_name(step)
    model_state = full_model_state(model, env)
    optim_state = get_optimizer_state_dict(model, optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_directory(final)) if env.is_main else None
        tmp = Path(broadcast_object(None if tmp is None else str(tmp), env))
        error: BaseException | None = None
        try:
            torch.save({"rank": env.rank, **rank_state}, tmp / f"rank{env.rank}.pt")
            if env.is_main:
                _write_model(model_state, tmp / "model.safetensors", step)
                torch.save({"optimizer": optim_state, "step": step}, tmp / "optim.pt")
                with open(tmp / "meta.json", "w") as f:
                    json.dump({"step": step, "world_size": env.world_size, **meta}, f, indent=1, default=str)
        except Exception as e:  # every rank must still reach the vote below, or the others would hang
            error = e
        ok = all_true(error is None, env)
        if error is not None:
            raise error
        if not ok:
            raise ManyviewError("another rank failed to write its part of the checkpoint", final)
    barrier(env)  # the rename is done before anyone reads or prunes
    if env.is_main:
        prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (hidden by a rename first, so none is seen half gone)."""
    for old in list_checkpoints(root)[:-keep_last]:
        hidden = old.with_name(f".{old.name}.deleting")
        os.replace(old, hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def remove_stale(root: str | os.PathLike) -> None:
    """Remove leftovers of saves or deletions interrupted by a crash (hidden ``.step_*`` entries)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise ManyviewError("not a manyview training checkpoint (no meta.json)", path)
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManyviewError(f"unreadable checkpoint metadata: {e}", meta_path) from None


def _check_optimizer_state(state: dict[str, Any], path: Path) -> None:
    """Refuse optimizer state for parameters the saved param groups do not list (a foreign or corrupt file)."""
    listed = {name for group in state.get("param_groups", []) for name in group.get("params", [])}
    unknown = sorted(set(state.get("state", {})) - listed)
    if unknown:
        raise ManyviewError(f"optim.pt has state for parameters outside its param groups: {unknown[:5]}", path)


def _damaged(checkpoint: Path, file: Path, what: str) -> ManyviewError:
    """A damaged checkpoint, named by its file, and what to do instead: an earlier checkpoint, or a fresh start."""
    earlier = [p for p in list_checkpoints(checkpoint.parent) if p.name < checkpoint.name]
    how = (f"remove {checkpoint} to resume from {earlier[-1].name}" if earlier else
           "start over without resuming (--train.resume False, or another output folder)")
    return ManyviewError(f"this checkpoint is damaged: {what}; {how}", file)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    env: DistEnv) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights and optimizer state into the (wrapped) ``model`` / ``optimizer`` on every rank.

    Returns ``(meta, rank_state)``. Every rank reads the full files and keeps its own shard (shared file
    system assumed, as for saving). The world size must match the one that wrote the checkpoint, since RNG
    states and stream positions are per rank.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    meta = read_meta(path)
    if meta.get("world_size") != env.world_size:
        raise ManyviewError(f"checkpoint was written by {meta.get('world_size')} processes, this run has "
                            f"{env.world_size}; resume with the same world size (its weights alone load "
                            f"from model.safetensors)", path)
    files = {name: path / name for name in ("model.safetensors", "optim.pt", f"rank{env.rank}.pt")}
    for name, file in files.items():
        if not file.is_file():
            raise _damaged(path, file, f"the checkpoint is missing {name}")
    try:
        model_state = read_safetensors(files["model.safetensors"])[0]
        for name in ("optim.pt", f"rank{env.rank}.pt"):
            if sniff_format(files[name]) != "pickle":
                raise ManyviewError("not a PyTorch file (truncated or overwritten?)", files[name])
        optim = read_pickle(files["optim.pt"], what="optimizer state")
        rank_state = read_pickle(files[f"rank{env.rank}.pt"], what="training state")
    except ManyviewError as e:  # corrupt or foreign files: say which file, and how to go on
        raise _damaged(path, Path(e.path) if e.path else path, e.message) from None
    if not (isinstance(optim, dict) and "optimizer" in optim and "step" in optim):
        raise _damaged(path, files["optim.pt"], "not an optimizer state written by manyview")
    options = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, model_state, options=options)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ManyviewError(f"checkpoint weights do not fit this model: {e}", files["model.safetensors"]) from None
    _check_optimizer_state(optim["optimizer"], path)
    # strict=False: a parameter that never received a gradient (e.g. a DPT refinement unit that the last
    # fusion stage does not call) has no Adam state, in the saved run and in an uninterrupted one alike.
    set_optimizer_state_dict(model, optimizer, optim["optimizer"],
                             options=StateDictOptions(full_state_dict=True, strict=False))
    if optim["step"] != meta["step"]:
        raise ManyviewError(f"optim.pt is for step {optim['step']} but meta.json says {meta['step']}", path)
    return meta, rank_state
