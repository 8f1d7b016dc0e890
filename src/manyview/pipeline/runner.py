"""One run from photos to a report, stage by stage, resumable (:class:`PipelineRun`).

Starting: the output folder must be new, empty or an earlier run's (``run.json``); an earlier run is replaced
(only what a run writes is removed), unless ``resume`` asks to continue it. Resuming: the photos and every
option must be those of the earlier run (a different option would make the finished stages wrong), stages
already committed are kept, the first uncommitted stage and everything after it are redone, and the splat
continues from its latest checkpoint. A failure or Ctrl-C in the first stage of a new run leaves nothing behind;
later, the committed stages stay and :meth:`PipelineRun.stopped_message` says what was kept and how to go on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from manyview.errors import ManyviewError
from manyview.io.atomic import check_output_folder
from manyview.pipeline import stages
from manyview.pipeline.config import RunConfig
from manyview.pipeline.report import write_report
from manyview.pipeline.run_folder import (RUN_MARKER, SPLAT_PARTIAL, STAGES, is_committed, latest_checkpoint_step,
                                          read_marker, read_run, remove_outputs, remove_run, write_run)
from manyview.recon.posed_photos import PhotosLike
from manyview.scene import Views

DESCRIPTIONS = {"poses": "cameras for the photos", "splat": "Gaussian splat", "evaluate": "held-out evaluation",
                "orbit": "orbit video and stills", "report": "report.html"}


def photos_record(photos: PhotosLike) -> list[dict]:
    """What identifies the photos of a run: names and file sizes (or image sizes for in-memory views)."""
    if isinstance(photos, Views):
        return [{"name": n, "size": [photos.height, photos.width]} for n in photos.names]
    return [{"name": str(Path(p).resolve()), "bytes": Path(p).stat().st_size} for p in photos]


class PipelineRun:
    """``run()`` takes ``photos`` (image files or Views) to ``out``/report.html under ``config``.

    ``source`` names the photos in the report; ``commands`` are shown as the way to reproduce the run;
    ``log`` receives the stage lines (default print); ``progress`` shows the library's bars."""

    def __init__(self, photos: PhotosLike, out: str | os.PathLike, config: RunConfig | None = None, *,
                 source: str = "", commands: list[str] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.photos = photos
        self.out = Path(out)
        self.config = (config or RunConfig()).resolved()
        self.source = source
        self.commands = commands or []
        self.progress = progress
        self.log = log
        self.stage: str | None = None  # the stage running now
        self.done: list[str] = []  # stages committed (earlier or in this session)
        self._created = False  # this run made the output folder (so a failure before any stage may remove it)
        self.seconds: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ running
    def run(self, resume: bool = False) -> dict:
        """Run every stage not yet committed; returns {'report': path, 'psnr', 'ssim', 'seconds'}."""
        if len(self.photos) == 0:
            raise ManyviewError("no photos given")
        check_output_folder(self.out, RUN_MARKER)
        record = {"source": self.source, "photos": photos_record(self.photos), "options": self.config.as_dict(),
                  "commands": self.commands}
        earlier = read_run(self.out) if self.out.is_dir() else None
        if resume and earlier is not None:
            self._check_same(earlier, record)
        elif earlier is not None:
            self.log(f"replacing the earlier run in {self.out}")
            remove_run(self.out)
        elif resume:
            self.log(f"no earlier run in {self.out}: starting from the beginning")
        self._created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        write_run(self.out, record)
        t0 = time.perf_counter()
        try:
            keep = resume
            for k, stage in enumerate(STAGES, 1):
                keep = keep and is_committed(self.out, stage)
                if keep:
                    self.done.append(stage)
                    self.log(f"[{k}/{len(STAGES)}] {stage}: finished earlier, kept")
                    continue
                remove_outputs(self.out, STAGES[k - 1:], keep_partial_splat=resume)
                self.stage = stage
                self.log(f"[{k}/{len(STAGES)}] {stage}: {DESCRIPTIONS[stage]}")
                start = time.perf_counter()
                summary = self._run_stage(stage)
                self.seconds[stage] = time.perf_counter() - start
                self.stage = None
                self.done.append(stage)
                self.log(f"[{k}/{len(STAGES)}] {stage}: {summary} ({self.seconds[stage]:.1f} s)")
        except BaseException:
            if not self.done:
                self._discard()
            raise
        metrics = (read_marker(self.out, "evaluate") or {}).get("info", {})
        return {"report": self.out / "report.html", "psnr": metrics.get("psnr"), "ssim": metrics.get("ssim"),
                "seconds": time.perf_counter() - t0}

    def _run_stage(self, stage: str) -> str:
        """Run one stage; returns its one-line summary."""
        cfg, out = self.config, self.out
        if stage == "poses":
            info = stages.poses(self.photos, out / "poses", cfg, self.progress)
            left = f"; not registered: {', '.join(info['unregistered'])}" if info["unregistered"] else ""
            return (f"{info['registered']} of {info['photos']} photos posed with {info['model']}, {info['points']} "
                    f"points{left}")
        if stage == "splat":
            info = stages.splat(out, cfg, self.progress, self.log)
            return f"{info['gaussians']} Gaussians after {info['steps']} steps"
        if stage == "evaluate":
            info = stages.evaluate(out, cfg, self.progress)
            if info["psnr"] is None:
                return "no held-out photos"
            return (f"held-out PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.3f} over {info['held_out']} photos "
                    f"(training views {info['train_psnr']:.2f} dB)")
        if stage == "orbit":
            info = stages.orbit(out, cfg, self.progress)
            return f"{info['frames']} frames" + (", video.mp4" if info["video"] else " (no video: no imageio-ffmpeg)")
        path = write_report(out, self.photos, read_run(out) or {}, self.commands)
        return f"wrote {path}"

    def _check_same(self, earlier: dict, record: dict) -> None:
        if earlier.get("photos") != record["photos"]:
            raise ManyviewError("--resume: these are not the photos of the earlier run in this folder; give the "
                                "same photos, or start over without --resume", self.out)
        before = earlier.get("options", {})
        for key, value in record["options"].items():
            if before.get(key) != value:
                option = "--" + key.replace("_", "-")
                raise ManyviewError(f"--resume: the earlier run used {option} {before.get(key)}, not {value}; resume "
                                    "with the same options, or start over without --resume", self.out)

    def _discard(self) -> None:
        """Nothing was committed: leave no trace of this run (the folder too, when this run made it)."""
        try:
            remove_run(self.out)
            if self._created and self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------ Ctrl-C
    def stopped_message(self) -> str:
        """What an interruption kept, and how to continue."""
        if not self.done:
            return f"nothing was kept ({self.out} is as it was before the run)"
        kept = f"the finished stages are kept in {self.out} ({', '.join(self.done)})"
        how = "continue with the same command and --resume"
        if self.stage == "splat":
            step = latest_checkpoint_step(self.out)
            where = self.out / SPLAT_PARTIAL / "checkpoints"
            if step is None:
                return f"{kept}; the splat had no checkpoint yet; {how}"
            return f"{kept}, and the splat's checkpoint at step {step} in {where}; {how} (training continues from it)"
        if self.stage is not None:
            return f"{kept}; the unfinished stage '{self.stage}' left nothing; {how}"
        return f"{kept}; {how}"


def run_pipeline(photos: PhotosLike, out: str | os.PathLike, config: RunConfig | None = None, *,
                 resume: bool = False, **kwargs) -> dict:
    """Photos -> ``out``/report.html (see :class:`PipelineRun`)."""
    return PipelineRun(photos, out, config, **kwargs).run(resume)


__all__ = ["DESCRIPTIONS", "PipelineRun", "photos_record", "run_pipeline"]
