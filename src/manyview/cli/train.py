"""``manyview train``: train a model with the shared trainer (one process, or many under ``torchrun``).

    manyview train fast3r bundled --out runs/fast3r_bundled       # the recipe of the bundled weights
    manyview train fast3r bundled --out runs/fast3r_bundled --train.resume True   # continue after a stop
    manyview train fast3r tiny --train.steps 20                    # a quick check
    manyview train efficient-lvsm bundled --out runs/efficient_lvsm_bundled
    manyview train condense tiny --train.steps 20                  # ConDense features, a quick check
    manyview train condense bundled --out runs/condense_bundled    # the recipe of the bundled features
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

from manyview.train import condense_task, fast3r_task, lvsm_task
from manyview.train.condense_task import CondenseTaskConfig
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


class _TaskTrain:
    """What every model's training command does: apply --out, train its task, report. Subclasses are dataclasses
    with the fields ``train``, ``task`` and ``out`` and say which task they train."""

    train: TrainConfig
    out: Path | None

    def make_task(self):
        raise NotImplementedError

    def interrupted(self) -> str:
        return _interrupted(self.out or self.train.out_dir)

    def run(self) -> None:
        from manyview.train.trainer import train

        cfg = _out_dir(self.train, self.out)
        _report(train(cfg, self.make_task()), Path(cfg.out_dir))


@dataclass
class Fast3RTrain(_TaskTrain):
    """Train Fast3R on synthetic multi-view scenes (and optional dataset folders with depth)."""

    train: TrainConfig
    task: Fast3RTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def make_task(self):
        from manyview.train.fast3r_task import Fast3RTask

        return Fast3RTask(self.task)


@dataclass
class LVSMTrain(_TaskTrain):
    """Train LVSM / Efficient-LVSM on synthetic scenes (or a RealEstate10K chunk folder: --task.data.source re10k
    --task.data.root DIR). MSE + 0.5 x VGG-19 perceptual loss when $MANYVIEW_VGG19_WEIGHTS names the weights, MSE
    alone otherwise. OUT/final is a model folder for ``manyview nvs --weights``."""

    train: TrainConfig
    task: LVSMTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def make_task(self):
        from manyview.train.lvsm_task import LVSMTask

        return LVSMTask(self.task)


@dataclass
class CondenseTrain(_TaskTrain):
    """Train ConDense features on synthetic scenes: a 2D student anchored to its teacher and a 3D point student
    whose features, rendered along camera rays, agree with the 2D student's. OUT/final is a model folder."""

    train: TrainConfig
    task: CondenseTaskConfig
    out: Path | None = None
    """Output folder (checkpoints, metrics.csv, final/); overrides --train.out-dir when given."""

    def make_task(self):
        from manyview.train.condense_task import CondenseTask

        return CondenseTask(self.task)


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
    "condense": {"tiny": "64 x 64, 3 views, 1024 points, feature dimension 32: minutes, for checks",
                 "bundled": "the recipe of the bundled model (128 x 128, 6000 steps; under 3 h on 2 CPU cores)",
                 "ablation-both": "the bundled recipe for 150 steps at 1024 points (the ablations' reference)",
                 "ablation-consistency": "150 steps, consistency term only (anchor_weight 0)",
                 "ablation-anchor": "150 steps, teacher anchor only (consistency_weight 0)"},
}


def _preset_run(model: str, name: str):
    if model == "fast3r":
        run = fast3r_task.preset(name)
        return Fast3RTrain(run.train, run.task)
    if model == "condense":
        run = condense_task.preset(name)
        return CondenseTrain(run.train, run.task)
    run = lvsm_task.preset(model, name)  # type: ignore[arg-type]
    return LVSMTrain(run.train, run.task)


def single_preset(model: str) -> str | None:
    """The preset of a model that has only one (it is then taken without being named), else None."""
    notes = _PRESET_NOTES.get(model, {})
    return next(iter(notes)) if len(notes) == 1 else None


def _model_command(model: str, description: str):
    """``train MODEL PRESET``: one subcommand per preset of MODEL. A model with a single preset would take it
    without naming it, since a choice of one is no subcommand."""
    command = {"fast3r": Fast3RTrain, "condense": CondenseTrain}.get(model, LVSMTrain)
    notes = _PRESET_NOTES[model]
    if len(notes) == 1:
        (name, note), = notes.items()
        return Annotated[command, tyro.conf.subcommand(model, default=_preset_run(model, name),
                                                       description=f"{description} (preset {name}: {note})")]
    presets = Union[tuple(Annotated[command, tyro.conf.subcommand(name, default=_preset_run(model, name),
                                                                  description=note)]
                          for name, note in notes.items())]
    return Annotated[presets, tyro.conf.subcommand(model, description=f"{description}: choose a preset")]


Train = Union[
    _model_command("fast3r", "Fast3R"),
    _model_command("lvsm", "LVSM decoder-only"),
    _model_command("efficient-lvsm", "Efficient-LVSM"),
    _model_command("condense", "ConDense: 2D / 3D features made consistent by rendering"),
    Annotated[ToyTrain, tyro.conf.subcommand("toy")],
]
"""The ``train`` command: ``manyview train {fast3r,lvsm,efficient-lvsm} {tiny,bundled} [options]``,
``manyview train condense {tiny,bundled,ablation-*}`` or ``manyview train toy``."""
