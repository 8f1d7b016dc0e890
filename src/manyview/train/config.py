"""A training run as one nested dataclass: the Python API, and what tyro turns into the CLI.

Batch sizes are global (summed over ranks and accumulation steps), so changing the number of processes or the
accumulation factor changes how the work is split, not what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class OptimConfig:
    """AdamW. Weight decay applies to matrices only (1-D parameters: biases, norm scales are exempt)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    """Clip the global gradient norm (over all parameters, all ranks) to this; None to only measure it."""


@dataclass
class ScheduleConfig:
    """Linear warm-up from 0 to ``OptimConfig.lr``, then cosine decay to ``min_lr`` at the last step."""

    warmup_steps: int = 0
    min_lr: float = 0.0
    decay: Literal["cosine", "constant"] = "cosine"


@dataclass
class ParallelConfig:
    """How the processes started by ``torchrun`` share the work."""

    mode: Literal["none", "ddp", "fsdp"] = "none"
    """none: one process; ddp: replicate the model, average gradients; fsdp: shard parameters, gradients and
    optimizer state over ranks (FSDP2 ``fully_shard``)."""
    fsdp_reshard_after_forward: bool = True
    """True frees gathered parameters after forward (ZeRO-3); False keeps them until backward (ZeRO-2-style:
    more memory, one all-gather fewer per step)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto: nccl on CUDA, gloo on CPU."""


@dataclass
class TrainConfig:
    """One training run. ``batch_size`` is global: ``batch_size = micro_batch * grad_accum * world_size``."""

    out_dir: Path = Path("runs/train")
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on a CUDA device that supports it, fp32 otherwise. bf16 on CPU only when asked."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    """Checkpoints kept in ``out_dir/checkpoints`` (older ones are deleted after each successful save)."""
    resume: bool | Path = False
    """False: start fresh (refused if ``out_dir`` already holds checkpoints); True: continue from the latest
    checkpoint in ``out_dir`` if there is one; a path: continue from that checkpoint directory."""
    progress: bool = True
    tensorboard: bool = False
    """Also write TensorBoard events to ``out_dir/tb`` (needs the ``tensorboard`` package)."""
