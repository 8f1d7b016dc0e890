"""A training run as one nested dataclass: the Python API, and what tyro turns into the CLI.

Batch sizes are global (summed over ranks and accumulation steps), so changing the number of processes or the
accumulation factor changes how the work is split, not what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from manyview.errors import require


def _at_least(value: float, low: float) -> bool:
    return value >= low  # False for NaN


@dataclass
class OptimConfig:
    """AdamW. Weight decay applies to matrices only (1-D parameters: biases, norm scales are exempt)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    """Clip the global gradient norm (over all parameters, all ranks) to this; None to only measure it."""

    def __post_init__(self):
        require(_at_least(self.lr, 0), "lr", "a number >= 0", self.lr)
        require(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)", tuple(self.betas))
        require(_at_least(self.eps, 0), "eps", "a number >= 0", self.eps)
        require(_at_least(self.weight_decay, 0), "weight_decay", "a number >= 0", self.weight_decay)
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "grad_clip", "a positive number", self.grad_clip)


@dataclass
class ScheduleConfig:
    """Linear warm-up from 0 to ``OptimConfig.lr``, then cosine decay to ``min_lr`` at the last step."""

    warmup_steps: int = 0
    min_lr: float = 0.0
    decay: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self):
        require(self.warmup_steps >= 0, "warmup_steps", "at least 0", self.warmup_steps)
        require(_at_least(self.min_lr, 0), "min_lr", "a number >= 0", self.min_lr)


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

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_last"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
