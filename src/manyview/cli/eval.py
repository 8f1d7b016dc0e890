"""``manyview eval``: score reconstructions against ground truth (see :mod:`manyview.recon.evaluate`).

    manyview eval reconstruction                                  # bundled Fast3R and COLMAP, 4/8/16 views
    manyview eval reconstruction --weights runs/fast3r_bundled/final --views 8 --scenes 10 --no-colmap
    manyview eval reconstruction --real /work/shared/data/real/family --views 8 --no-synthetic
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from manyview.cli.nvs import EvalNVS


@dataclass
class EvalReconstruction:
    """Fast3R (default: the bundled weights), COLMAP SfM and the pairwise baseline on held-out synthetic scenes
    (and optionally real photos against COLMAP's poses). Prints a Markdown table and writes JSON."""

    weights: Path | None = None
    """Fast3R weights: a folder with config.json + model.safetensors, or a trainer checkpoint folder (then
    --preset gives the architecture). Default: the bundled weights."""
    preset: str = "tiny"
    """Architecture for weights without config.json."""
    fast3r: bool = True
    """Evaluate Fast3R (--no-fast3r for COLMAP / pairwise only)."""
    pairwise_weights: Path | None = None
    """Weights of the pairwise (DUSt3R-style) baseline; evaluated when given."""
    colmap: bool = True
    """Also run COLMAP incremental SfM (pycolmap) on the same images."""
    identity: bool = True
    """Also score the trivial answer "all cameras at one pose": the RRA a method gets for free."""
    views: tuple[int, ...] = (4, 8, 16)
    scenes: int = 5
    """Held-out scenes per kind and view count."""
    kinds: tuple[Literal["object", "room"], ...] = ("object", "room")
    size: int = 112
    """Image height and width (synthetic renders; square crops of real photos)."""
    first_scene: int = 0
    synthetic: bool = True
    """Evaluate on held-out synthetic scenes (--no-synthetic with --real for photos only)."""
    real: tuple[Path, ...] = ()
    """Folders of photos scored against COLMAP's poses of all their frames (e.g. /work/shared/data/real/family)."""
    out: Path = Path("results/eval_reconstruction.json")
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""

    def run(self) -> None:
        import torch

        from manyview.io.atomic import atomic_open
        from manyview.recon import evaluate as ev

        if self.threads:
            torch.set_num_threads(self.threads)
        fast3r = ev.load_fast3r(self.weights, self.preset) if self.fast3r else None
        pairwise = ev.load_pairwise(self.pairwise_weights) if self.pairwise_weights else None
        report = ev.EvalReport(config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})
        if self.synthetic:
            cfg = ev.SyntheticEval(views=self.views, scenes=self.scenes, kinds=self.kinds, height=self.size,
                                   width=self.size, first_scene=self.first_scene)
            report.records = ev.evaluate_synthetic(cfg, fast3r=fast3r, pairwise=pairwise, colmap=self.colmap,
                                                  identity=self.identity)
            report.summary = ev.summarize(report.records)
            report.goal = ev.goal_check(report.summary)
            print()
            print(ev.markdown_table(report.summary, ev.SYNTHETIC_COLUMNS))
            if report.goal:
                g = report.goal
                print(f"\nFast3R at {g['views']} views: RRA@15 {g['RRA@15']:.1f}, RTA@15 {g['RTA@15']:.1f}, "
                      f"mAA@30 {g['mAA@30']:.1f} -> goal (95 / 90 / 80) {'met' if g['met'] else 'not met'}")
        for folder in self.real:
            report.real += ev.evaluate_real(folder, self.views, fast3r=fast3r, pairwise=pairwise, size=self.size)
        if report.real:
            print()
            print(ev.markdown_table(report.real, ev.REAL_COLUMNS))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.out, "w") as f:
            json.dump(report.to_json(), f, indent=1)
        print(f"\nwrote {self.out}")


# A one-member Union would collapse into its member; the suppressed None keeps "reconstruction" a subcommand
# (room for other evaluations) without showing up in the help.
Eval = Union[Annotated[EvalReconstruction, tyro.conf.subcommand("reconstruction", default=EvalReconstruction())],
             Annotated[EvalNVS, tyro.conf.subcommand("nvs", default=EvalNVS())],
             Annotated[None, tyro.conf.Suppress]]
"""The ``eval`` command: ``manyview eval reconstruction [options]``."""
