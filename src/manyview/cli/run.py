"""``manyview run``: photos -> poses -> Gaussian splat -> held-out evaluation -> orbit -> report.html.

    manyview run photos/ --out runs/scene
    manyview run photos/ --out runs/scene --resume          # after Ctrl-C: continue where it stopped
    manyview run photos/ --out runs/scene --poses fast3r+ba --weights path/to/Fast3R_ViT_Large_512
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from manyview.errors import ManyviewError
from manyview.pipeline.config import RunConfig


@dataclass
class Run:
    """Photos to a Gaussian splat and a report, in one command: cameras for the photos (COLMAP SfM by default;
    the photos undistorted), a splat trained from its points (every 8th photo held out, photos at most 480 px
    wide), the held-out photos beside their renders (PSNR / SSIM), an orbit video and stills, and OUT/report.html,
    a self-contained page with all of it and the commands that reproduce it.

    Each stage is committed whole into OUT (poses/, splat/, evaluate/, orbit/, report.html) and --resume continues
    from the first unfinished one (the splat from its last checkpoint). OUT must be new, empty or an earlier
    run's, which is replaced unless --resume is given.
    """

    photos: tyro.conf.Positional[list[Path]] = field(default_factory=list)
    """A folder of photos, or photo files (or --sample)."""
    out: Path = Path("out/run")
    """Output folder (new, empty, or an earlier run's)."""
    sample: bool = False
    """Run on the embedded sample photos (16 synthetic 192 x 192 photos round an object, on a half orbit; 1500
    splat steps unless --iterations says otherwise; no far shell and no per-photo exposure, which renders of one
    exposure on an empty background do not need) instead of PHOTOS."""
    resume: bool = False
    """Continue the earlier run in OUT from its first unfinished stage (same photos and options)."""
    config: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)

    def __post_init__(self):
        self._pipeline = None

    def interrupted(self) -> str:
        if self._pipeline is None:
            return "nothing was written"
        return self._pipeline.stopped_message()

    def run(self) -> None:
        from manyview.cli.common import image_files
        from manyview.pipeline import PipelineRun

        if not self.photos and not self.sample:
            raise ManyviewError("no photos given: pass a folder of photos or photo files (or --sample)")
        if self.photos and self.sample:
            raise ManyviewError("give PHOTOS or --sample, not both")
        if self.sample:
            from manyview.synth import sample_photos

            photos, source = sample_photos()[1], "the embedded sample photos"
        else:
            photos = image_files(self.photos, "PHOTOS")
            source = str(self.photos[0]) if len(self.photos) == 1 else f"{len(photos)} photos"
        config = self.config.resolved(sample=self.sample)
        self._pipeline = PipelineRun(photos, self.out, config, source=source, commands=self._commands(config))
        result = self._pipeline.run(resume=self.resume)
        psnr = result["psnr"]
        scores = f"held-out PSNR {psnr:.2f} dB, SSIM {result['ssim']:.3f}; " if psnr is not None else ""
        print(f"{scores}wrote {result['report']} ({result['seconds']:.0f} s); look around: manyview view "
              f"{self.out / 'splat'}")

    def _commands(self, cfg: RunConfig) -> list[str]:
        """The command that reproduces this run, and the same run as separate commands (``cfg``: the options with
        the defaults resolved)."""
        defaults, out = RunConfig(), self.out
        args = [a for a in sys.argv[1:] if a not in ("--resume", "--debug")] if sys.argv[1:2] == ["run"] else []
        whole = "manyview " + " ".join(shlex.quote(a) for a in args) if args else None
        source = " ".join(shlex.quote(str(p)) for p in self.photos)
        make_photos = []
        if self.sample:  # the step-by-step commands start from the sample photos written as files
            source = shlex.quote(str(out / "photos" / "images"))
            make_photos = [f"manyview synth --kind sample-photos --out {shlex.quote(str(out / 'photos'))}"]
        if whole is None:
            options = [_option(k, v) for k, v in self.config.as_dict().items() if v != getattr(defaults, k)]
            whole = " ".join(["manyview run", source, "--out", shlex.quote(str(out)), *options])
        poses = {"colmap": "--model colmap", "fast3r": "--model fast3r", "fast3r+ba": "--model fast3r --refine"}
        weights = f" --weights {shlex.quote(cfg.weights)}" if cfg.weights else ""
        return [
            "# the whole run",
            whole,
            "# the same, step by step",
            *make_photos,
            f"manyview reconstruct {source} {poses[cfg.poses]}{weights} --camera-model {cfg.camera_model} "
            f"--out {shlex.quote(str(out / 'poses'))}" if cfg.poses != "fast3r" else
            f"manyview reconstruct {source}{weights} --out {shlex.quote(str(out / 'poses'))}",
            f"manyview splat {shlex.quote(str(out / 'poses'))} --out {shlex.quote(str(out / 'splat'))} "
            f"--iterations {cfg.iterations} --max-width {cfg.max_width} --test-every {cfg.test_every}"
            + (" --exposure" if cfg.exposure else "")
            + (f" --far-points {cfg.far_points} --densify.prune-scale-by-distance" if cfg.far_points else ""),
            f"manyview render {shlex.quote(str(out / 'splat' / 'splat.ply'))} --orbit {cfg.orbit_frames} "
            f"--out {shlex.quote(str(out / 'orbit'))}",
            f"manyview view {shlex.quote(str(out / 'splat'))}",
        ]


def _option(name: str, value) -> str:
    """One ``manyview run`` option as typed: ``--flag`` / ``--no-flag`` for booleans, ``--name value`` else."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {shlex.quote(str(value))}"
