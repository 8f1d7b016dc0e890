"""The one training loop: any :class:`TrainTask`, one process or many (DDP / FSDP2), exact resume.

Per update: ``grad_accum`` micro-batches (forward under autocast, backward of ``loss / grad_accum``), global
gradient norm (DTensor-aware, so it is the norm over all shards under FSDP), clipping, AdamW with the lr of
:func:`lr_at`, then loss and metrics averaged over ranks. Checkpoints every ``ckpt_every`` updates and at the
end. Launch with ``torchrun --nproc-per-node N ...`` for several processes, or just run it for one.

Accumulation: DDP skips its all-reduce until the last micro-batch (``no_sync``); FSDP reduce-scatters every
micro-batch, so accumulated gradients stay sharded (least memory, one reduce-scatter per micro-batch).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory
from manyview.progress import progress
from manyview.train import checkpoint as ckpt
from manyview.train.config import OptimConfig, TrainConfig
from manyview.train.distributed import DistEnv, all_reduce_mean, barrier, broadcast_object, setup, teardown, wrap_model
from manyview.train.logging import MetricsLog
from manyview.train.schedule import lr_at
from manyview.train.task import TrainTask


@dataclass
class TrainResult:
    """What a run did: its last step, every logged row (same on all ranks), the last checkpoint."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def train(cfg: TrainConfig, task: TrainTask) -> TrainResult:
    """Train ``task`` as ``cfg`` says; on every rank, under ``torchrun`` (or in one plain process).

    The process group is created from the launcher's environment and destroyed at the end. A process that
    trains several times under one launcher should create the group itself first (``train`` then joins it):
    re-creating the default group on the same ``MASTER_PORT`` can meet the previous group's leftovers and hang.
    """
    env = setup(cfg.parallel, cfg.device)
    try:
        return _Trainer(cfg, task, env).run()
    finally:
        teardown(env)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and higher; biases, norm scales and other 1-D parameters get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def grad_norm_and_clip(params: list[nn.Parameter], max_norm: float | None) -> Tensor:
    """Global L2 norm of all gradients (over every FSDP shard) and, with ``max_norm``, clip them to it."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total.full_tensor() if isinstance(total, DTensor) else total


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA device that has it (``auto``), or when asked for explicitly; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ManyviewError(f"precision 'bf16' was asked for but {torch.cuda.get_device_name(device)} "
                                f"does not support bfloat16; use 'fp32'")
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    raise ManyviewError(f"unknown precision {precision!r}; expected auto, fp32 or bf16")


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside dicts, lists, tuples and objects with ``.to``) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if callable(getattr(batch, "to", None)):
        return batch.to(device)
    return batch


def _check(cfg: TrainConfig, env: DistEnv) -> int:
    """Validate the numbers of a config; returns the per-rank micro-batch size."""
    for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_last"):
        if getattr(cfg, name) < 1:
            raise ManyviewError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    per_update = cfg.grad_accum * env.world_size
    if cfg.batch_size % per_update:
        raise ManyviewError(f"batch_size {cfg.batch_size} is not divisible by grad_accum x world size "
                            f"= {cfg.grad_accum} x {env.world_size}")
    return cfg.batch_size // per_update


class _Trainer:
    def __init__(self, cfg: TrainConfig, task: TrainTask, env: DistEnv):
        self.cfg, self.task, self.env = cfg, task, env
        self.micro_batch = _check(cfg, env)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.amp_dtype = autocast_dtype(cfg.precision, env.device)

    def _resume_path(self) -> Path | None:
        """Decided on rank 0 and broadcast, so every rank loads the same checkpoint (or raises the same error)."""
        path, error = None, None
        if self.env.is_main:
            try:
                found = ckpt.list_checkpoints(self.ckpt_root)
                if self.cfg.resume is True:
                    path = found[-1] if found else None
                elif self.cfg.resume is False:
                    if found:
                        raise ManyviewError("already holds checkpoints; pass resume=True to continue, or choose "
                                            "another out_dir", self.out_dir)
                else:
                    path = Path(self.cfg.resume)
                    ckpt.read_meta(path)
                ckpt.remove_stale(self.ckpt_root)
            except ManyviewError as e:
                error = (e.message, e.path)
        path, error = broadcast_object((None if path is None else str(path), error), self.env)
        if error is not None:
            raise ManyviewError(*error)
        return None if path is None else Path(path)

    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        resume = self._resume_path()

        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        seed_everything(cfg.seed + env.rank)  # dropout and other model-side randomness differ per rank
        units = self.task.shard_units(model) if hasattr(self.task, "shard_units") else None
        model = wrap_model(model, env, cfg.parallel, units)
        model.train()
        optimizer = make_optimizer(model, cfg.optim)
        params = [p for p in model.parameters() if p.requires_grad]

        step, elapsed, rank_state = 0, 0.0, None
        if resume is not None:
            meta, rank_state = ckpt.load_checkpoint(resume, model, optimizer, env)
            step, elapsed = int(meta["step"]), float(meta.get("elapsed", 0.0))
        position = step * cfg.grad_accum
        if rank_state is not None and rank_state["stream_position"] != position:
            raise ManyviewError(f"checkpoint stream position {rank_state['stream_position']} does not match "
                                f"step {step} x grad_accum {cfg.grad_accum}; resume with the same grad_accum",
                                resume)
        stream = iter(self.task.make_stream(env.rank, env.world_size, cfg.seed, self.micro_batch, position))
        if rank_state is not None:  # after the stream exists: creating it must not shift the restored RNG
            ckpt.restore_rng(rank_state["rng"], env.device)

        log = MetricsLog(self.out_dir, step, cfg.tensorboard) if env.is_main else None
        bar = progress(total=cfg.steps, desc="train", enabled=env.is_main and cfg.progress, initial=step)
        result = TrainResult(step=step, checkpoint=resume)
        try:
            t0 = time.monotonic() - elapsed
            t_bar, step_bar = time.monotonic(), step
            while step < cfg.steps:
                row = self._update(model, optimizer, params, stream, step)
                step += 1
                row = {"step": step, **row, "time": time.monotonic() - t0}
                if not math.isfinite(row["loss"]):
                    raise ManyviewError(f"loss became {row['loss']} at step {step}; lower the learning rate "
                                        f"or check the data", self.out_dir)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    result.history.append(row)
                    if log is not None:
                        log.write(row)
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    result.checkpoint = self._save(model, optimizer, step, row["time"])
                now = time.monotonic()
                if now - t_bar > 0.5 or step == cfg.steps:
                    rate = (step - step_bar) * cfg.batch_size / (now - t_bar)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.3g}",
                                    samples_per_s=f"{rate:.1f}", refresh=False)
                    t_bar, step_bar = now, step
                bar.update(1)
            result.step = step
            self._export(model)
        finally:
            bar.close()
            if log is not None:
                log.close()
        return result

    def _update(self, model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                stream, step: int) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        lr = lr_at(step, cfg.steps, cfg.optim.lr, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=env.device)
        metric_sums: dict[str, Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = to_device(next(stream), env.device)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast(env.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    loss, metrics = self.task.loss(model, batch)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
            if micro and metrics.keys() != metric_sums.keys():
                raise ManyviewError(f"task metrics changed keys between micro-batches: {sorted(metrics)} vs "
                                    f"{sorted(metric_sums)}")
            for k, v in metrics.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=env.device).detach()
                metric_sums[k] = metric_sums.get(k, 0) + v
        norm = grad_norm_and_clip(params, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        names = sorted(metric_sums)
        local = torch.stack([loss_sum, *(metric_sums[k] for k in names)]) / cfg.grad_accum
        values = all_reduce_mean(local, env).tolist()
        return {"loss": values[0], "lr": lr, "grad_norm": float(norm), **dict(zip(names, values[1:]))}

    def _save(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, elapsed: float) -> Path:
        cfg = self.cfg
        rank_state = {"rng": ckpt.capture_rng(self.env.device), "stream_position": step * cfg.grad_accum}
        meta = {"parallel": cfg.parallel.mode, "elapsed": elapsed, "torch": torch.__version__,
                "config": asdict(cfg)}
        return ckpt.save_checkpoint(self.ckpt_root, step, model, optimizer, self.env, rank_state, meta,
                                    cfg.keep_last)

    def _export(self, model: nn.Module) -> None:
        """Hand the final full weights to the task's ``save_weights`` (rank 0), into ``out_dir/final``."""
        if not hasattr(self.task, "save_weights"):
            return
        state = ckpt.full_model_state(model, self.env)
        if self.env.is_main:
            with atomic_directory(self.out_dir / "final") as tmp:
                self.task.save_weights(state, tmp)
        barrier(self.env)
