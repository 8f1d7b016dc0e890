"""``manyview train``: train a model with the shared trainer (one process, or many under ``torchrun``).

    manyview train fast3r bundled --out runs/fast3r_bundled       # the recipe of the bundled weights
    manyview train fast3r bundled --out runs/fast3r_bundled --train.resume True   # continue after a stop
    manyview train fast3r tiny --train.steps 20                    # a quick check
    manyview train toy                                             # the trainer's smallest task

The preset (``tiny`` / ``bundled``) sets every default; any field can still be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Union

import tyro

from manyview.cli.nvs import EfficientLVSMTrainPresets, LVSMTrainPresets
from manyview.train.config import TrainConfig
from manyview.train.fast3r_task import Fast3RTaskConfig, preset
from manyview.train.toy import ToyConfig


def _report(result, out_dir: Path) -> None:
    if result.history:
        last = result.history[-1]
        print(f"step {result.step}: loss {last['loss']:.4g}; metrics in {out_dir / 'metrics.csv'}")
    if (out_dir / "final").is_dir():
        print(f"final weights in {out_dir / 'final'}")


@dataclass
class Fast3RTrain:
    """Train Fast3R on synthetic multi-view scenes (and optional dataset folders with depth)."""

    train: TrainConfig
    task: Fast3RTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def run(self) -> None:
        from manyview.train.fast3r_task import Fast3RTask
        from manyview.train.trainer import train

        cfg = self.train if self.out is None else replace(self.train, out_dir=self.out)
        _report(train(cfg, Fast3RTask(self.task)), Path(cfg.out_dir))


@dataclass
class ToyTrain:
    """Train the trainer's toy transformer (a check that a single- or multi-process setup works)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/toy"), steps=200,
                                                                   batch_size=16, ckpt_every=100))
    toy: ToyConfig = field(default_factory=ToyConfig)

    def run(self) -> None:
        from manyview.train.toy import ToyTask
        from manyview.train.trainer import train

        _report(train(self.train, ToyTask(self.toy)), Path(self.train.out_dir))


def _fast3r_preset(name: str) -> Fast3RTrain:
    run = preset(name)
    return Fast3RTrain(run.train, run.task)


Fast3RPresets = Union[
    Annotated[Fast3RTrain, tyro.conf.subcommand("tiny", default=_fast3r_preset("tiny"),
                                                description="a short run at 64 x 64 to check a setup")],
    Annotated[Fast3RTrain, tyro.conf.subcommand("bundled", default=_fast3r_preset("bundled"),
                                                description="the recipe of the bundled weights (hours of CPU)")],
]

Train = Union[
    Annotated[Fast3RPresets, tyro.conf.subcommand("fast3r", description="Fast3R: choose a preset, then override")],
    Annotated[LVSMTrainPresets, tyro.conf.subcommand("lvsm", description="LVSM decoder-only: choose a preset")],
    Annotated[EfficientLVSMTrainPresets, tyro.conf.subcommand("efficient-lvsm",
                                                              description="Efficient-LVSM: choose a preset")],
    Annotated[ToyTrain, tyro.conf.subcommand("toy")],
]
"""The ``train`` command: ``manyview train {fast3r {tiny,bundled},toy} [options]``."""
