"""The folder ``manyview run`` builds, stage by stage, and how a stage is committed.

Layout::

    run.json            the run's marker: the photos, the options, the command; written first
    poses/              the photos' cameras: a reconstruct output (undistorted photos, sparse/0, transforms.json,
                        points.ply, scene.glb, summary.json)
    splat.partial/      the splat while it trains: its checkpoints (what --resume continues from)
    splat/              the trained splat: splat.ply, eval.json, transforms.json, the last checkpoint
    evaluate/           held-out renders beside the photos, metrics.json
    orbit/              stills of an orbit around the scene, video.mp4 (with the video extra)
    report.html         the self-contained report; written last

A stage is committed when its folder holds ``stage.json`` (the stage's time and what it reports). Folders are
built under a temporary name with the marker inside and renamed into place (the splat trains in
``splat.partial`` and is renamed to ``splat`` once its marker is written), so a stage is either committed whole
or absent. ``report.html`` is written atomically and commits the last stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open

RUN_MARKER = "run.json"
STAGE_MARKER = "stage.json"
REPORT_NAME = "report.html"
SPLAT_PARTIAL = "splat.partial"
STAGES = ("poses", "splat", "evaluate", "orbit", "report")
FORMAT = "manyview-run"
# Everything a run writes into its folder: only these are ever removed when a run starts over.
OWN_NAMES = (RUN_MARKER, REPORT_NAME, SPLAT_PARTIAL) + STAGES[:-1]


def stage_path(out: Path, stage: str) -> Path:
    return out / REPORT_NAME if stage == "report" else out / stage


def is_committed(out: Path, stage: str) -> bool:
    if stage == "report":
        return (out / REPORT_NAME).is_file()
    return (out / stage / STAGE_MARKER).is_file()


def read_marker(out: Path, stage: str) -> dict | None:
    """A committed stage's marker (``seconds``, ``info``), None when the stage is not committed."""
    if stage == "report" or not is_committed(out, stage):
        return None
    try:
        return json.loads((out / stage / STAGE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, stage: str, seconds: float, info: dict) -> None:
    with atomic_open(folder / STAGE_MARKER, "w", encoding="utf-8") as fh:
        json.dump({"stage": stage, "seconds": round(seconds, 3), "info": info}, fh, indent=1)
        fh.write("\n")


def read_run(out: Path) -> dict | None:
    """The run marker of ``out``, None when there is none; a damaged one is an error naming it."""
    path = out / RUN_MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ManyviewError(f"this run's marker cannot be read ({type(e).__name__}); remove the folder or give a "
                            "new --out", path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ManyviewError("not a manyview run marker; give a new --out", path)
    return record


def write_run(out: Path, record: dict) -> None:
    with atomic_open(out / RUN_MARKER, "w", encoding="utf-8") as fh:
        json.dump({"format": FORMAT, "version": 1, **record}, fh, indent=1)
        fh.write("\n")


def remove_outputs(out: Path, stages: tuple[str, ...], keep_partial_splat: bool = False) -> None:
    """Remove what ``stages`` wrote (their later stages depend on them, so callers pass a tail of STAGES)."""
    for stage in stages:
        target = stage_path(out, stage)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if stage == "splat" and not keep_partial_splat and (out / SPLAT_PARTIAL).exists():
            shutil.rmtree(out / SPLAT_PARTIAL)


def remove_run(out: Path) -> None:
    """Remove everything a run wrote into ``out`` (nothing else)."""
    remove_outputs(out, STAGES)
    for name in OWN_NAMES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def commit_folder(built: Path, target: Path) -> None:
    """Rename a finished stage folder into place (an uncommitted leftover at ``target`` is replaced)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(built, target)


def latest_checkpoint_step(out: Path) -> int | None:
    root = out / SPLAT_PARTIAL / "checkpoints"
    steps = sorted(p.name for p in root.glob("step_[0-9]*")) if root.is_dir() else []
    return int(steps[-1].split("_")[1]) if steps else None


__all__ = ["OWN_NAMES", "REPORT_NAME", "RUN_MARKER", "SPLAT_PARTIAL", "STAGES", "STAGE_MARKER", "commit_folder",
           "is_committed", "latest_checkpoint_step", "read_marker", "read_run", "remove_outputs", "remove_run",
           "stage_path", "write_marker", "write_run"]
