"""Learning rate as a pure function of the step: linear warm-up, then cosine decay (or constant).

Being a function of the step alone, the schedule needs no state of its own to resume exactly.
"""

from __future__ import annotations

import math

from manyview.train.config import ScheduleConfig


def lr_at(step: int, total_steps: int, lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate of the update numbered ``step`` (0-based) in a run of ``total_steps`` updates.

    Warm-up rises linearly so that update 0 already moves (``lr / warmup``) and update ``warmup - 1`` uses the
    full ``lr``; cosine then falls from ``lr`` to exactly ``min_lr`` at the last update ``total_steps - 1``.
    """
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return lr
    span = total_steps - 1 - cfg.warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
