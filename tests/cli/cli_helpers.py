"""Checks shared by the command-line tests: "refused with one clear line", folders left as they were."""

from __future__ import annotations

from pathlib import Path

import torch

from manyview.cli.main import main


def refused(capsys, args, *mentions: str, code: int = 2) -> str:
    """Run ``manyview ARGS``: exit ``code``, one line on stderr naming each of ``mentions``, no traceback and no
    "internal error"; returns that line."""
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("manyview: error: " if code == 2 else "manyview: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    for mention in mentions:
        assert str(mention) in lines[0], (mention, err)
    return lines[0]


def hidden(folder: Path) -> list[str]:
    """Names starting with '.' in ``folder``: temporaries (none may be left behind)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to show a folder was left exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def splat_checkpoint(dataset: Path, out: Path, **config) -> Path:
    """A real checkpoint of `manyview splat` (step 0: saved before any step, no rendering needed)."""
    from manyview.splat.data import load_training_views
    from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

    views, points = load_training_views(dataset, 16)
    trainer = SplatTrainer(views, out, SplatTrainConfig(**{"sh_degree": 0, "max_init_points": 50, **config}),
                           points=points)
    torch.manual_seed(0)
    return trainer.save_checkpoint()
