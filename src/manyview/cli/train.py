"""``manyview train``: train a model with the shared trainer (one process, or many under ``torchrun``).

    manyview train fast3r bundled --out runs/fast3r_bundled       # the recipe of the bundled weights
    manyview train fast3r bundled --out runs/fast3r_bundled --train.resume True   # continue after a stop
    manyview train fast3r tiny --train.steps 20                    # a quick check
    manyview train efficient-lvsm bundled --out runs/efficient_lvsm_bundled
    manyview train toy                                             # the trainer's smallest task

The preset (``tiny`` / ``bundled``) sets every default; any field can still be overridden. The presets themselves
are the library's (``manyview.train.fast3r_task.preset``, ``manyview.train.lvsm_task.preset``); this module only
names them as subcommands.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Union

import tyro

from manyview.train import fast3r_task, lvsm_task
from manyview.train.config import TrainConfig
from manyview.train.fast3r_task import Fast3RTaskConfig
from manyview.train.lvsm_task import LVSMTaskConfig
from manyview.train.toy import ToyConfig


def _out_dir(train: TrainConfig, out: Path | None) -> TrainConfig:
    """The run's config with --out applied, its output folder made (or refused) before any work starts."""
    from manyview.io.atomic import make_folder

    cfg = train if out is None else replace(train, out_dir=out)
    make_folder(cfg.out_dir)
    return cfg


def _interrupted(out_dir: Path) -> str:
    return (f"the checkpoints written so far are kept in {Path(out_dir) / 'checkpoints'} (continue with "
            "--train.resume True)")


def _report(result, out_dir: Path) -> None:
    if result.history:
        last = result.history[-1]
        psnr = f", PSNR {last['psnr']:.2f} dB" if "psnr" in last else ""
        print(f"step {result.step}: loss {last['loss']:.4g}{psnr}; metrics in {out_dir / 'metrics.csv'}")
    if (out_dir / "final").is_dir():
        print(f"final weights in {out_dir / 'final'}")


@dataclass
class Fast3RTrain:
    """Train Fast3R on synthetic multi-view scenes (and optional dataset folders with depth)."""

    train: TrainConfig
    task: Fast3RTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def interrupted(self) -> str:
        return _interrupted(self.out or self.train.out_dir)

    def run(self) -> None:
        from manyview.train.fast3r_task import Fast3RTask
        from manyview.train.trainer import train

        cfg = _out_dir(self.train, self.out)
        _report(train(cfg, Fast3RTask(self.task)), Path(cfg.out_dir))


@dataclass
class LVSMTrain:
    """Train LVSM / Efficient-LVSM on synthetic scenes (or a RealEstate10K chunk folder: --task.data.source re10k
    --task.data.root DIR). MSE + 0.5 x VGG-19 perceptual loss when $MANYVIEW_VGG19_WEIGHTS names the weights, MSE
    alone otherwise. OUT/final is a model folder for ``manyview nvs --weights``."""

    train: TrainConfig
    task: LVSMTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def interrupted(self) -> str:
        return _interrupted(self.out or self.train.out_dir)

    def run(self) -> None:
        from manyview.train.lvsm_task import LVSMTask
        from manyview.train.trainer import train

        cfg = _out_dir(self.train, self.out)
        _report(train(cfg, LVSMTask(self.task)), Path(cfg.out_dir))


@dataclass
class ToyTrain:
    """Train the trainer's toy transformer (a check that a single- or multi-process setup works)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/toy"), steps=200,
                                                                   batch_size=16, ckpt_every=100))
    toy: ToyConfig = field(default_factory=ToyConfig)

    def interrupted(self) -> str:
        return _interrupted(self.train.out_dir)

    def run(self) -> None:
        from manyview.train.toy import ToyTask
        from manyview.train.trainer import train

        cfg = _out_dir(self.train, None)
        _report(train(cfg, ToyTask(self.toy)), Path(cfg.out_dir))


# ------------------------------------------------------------------------------------------------------ presets
# What each preset is for, in the help; the runs themselves come from the library.
_PRESET_NOTES = {
    "fast3r": {"tiny": "a short run at 64 x 64 to check a setup",
               "bundled": "the recipe of the bundled weights (hours of CPU)"},
    "lvsm": {"tiny": "32 x 32, four blocks of width 64: seconds, for checks",
             "bundled": "the recipe of the bundled weights (32 x 32, 3000 steps; 50 min on 2 CPU cores)"},
    "efficient-lvsm": {"tiny": "32 x 32, four blocks of width 64: seconds, for checks",
                       "bundled": "the recipe of the bundled weights (32 x 32, 3000 steps; 20 min on 2 CPU cores)"},
}


def _preset_run(model: str, name: str):
    if model == "fast3r":
        run = fast3r_task.preset(name)
        return Fast3RTrain(run.train, run.task)
    run = lvsm_task.preset(model, name)  # type: ignore[arg-type]
    return LVSMTrain(run.train, run.task)


def _presets(model: str):
    command = Fast3RTrain if model == "fast3r" else LVSMTrain
    return Union[tuple(Annotated[command, tyro.conf.subcommand(name, default=_preset_run(model, name),
                                                               description=note)]
                       for name, note in _PRESET_NOTES[model].items())]


Train = Union[
    Annotated[_presets("fast3r"), tyro.conf.subcommand("fast3r", description="Fast3R: choose a preset, then override")],
    Annotated[_presets("lvsm"), tyro.conf.subcommand("lvsm", description="LVSM decoder-only: choose a preset")],
    Annotated[_presets("efficient-lvsm"), tyro.conf.subcommand("efficient-lvsm",
                                                               description="Efficient-LVSM: choose a preset")],
    Annotated[ToyTrain, tyro.conf.subcommand("toy")],
]
"""The ``train`` command: ``manyview train {fast3r,lvsm,efficient-lvsm} {tiny,bundled} [options]`` or
``manyview train toy``."""
