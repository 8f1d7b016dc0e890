"""``manyview run`` on the command line: the whole job on the sample, Ctrl-C and --resume, and each bad input
answered with one clear line and nothing written."""

import json
from pathlib import Path

import pytest
from cli_helpers import hidden, refused
from PIL import Image

from manyview.cli.main import main
from manyview.splat.trainer import SplatTrainer

pytest.importorskip("pycolmap")

FAST = ["--iterations", "24", "--max-width", "64", "--orbit-frames", "3", "--checkpoint-every", "10"]


def test_run_is_interrupted_then_resumed_to_a_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_step = SplatTrainer.train_step

    def ctrl_c_at_15(self):
        if self.step == 15:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(SplatTrainer, "train_step", ctrl_c_at_15)
    assert main(["run", "--sample", "--out", str(out), *FAST]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("manyview: interrupted; the finished stages are kept in")
    assert "(poses)" in err[0] and "checkpoint at step 10" in err[0] and "--resume" in err[0]
    monkeypatch.setattr(SplatTrainer, "train_step", real_step)

    assert main(["run", "--sample", "--out", str(out), *FAST, "--resume"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("held-out PSNR ") and f"wrote {out / 'report.html'}" in last
    assert f"manyview view {out / 'splat'}" in last
    assert "[1/5] poses: finished earlier, kept" in captured.out
    assert "continuing from the checkpoint at step 10" in captured.out
    record = json.loads((out / "run.json").read_text())
    assert record["options"]["iterations"] == 24 and record["photos"][0]["name"] == "00000.png"
    page = (out / "report.html").read_text()
    # the step-by-step commands start from the sample photos as files, which synth writes
    assert f"manyview synth --kind sample-photos --out {out / 'photos'}" in page
    assert f"manyview reconstruct {out / 'photos' / 'images'} --model colmap" in page and "manyview splat " in page
    assert hidden(tmp_path) == [] and hidden(out) == []

    # other options cannot resume this run; a new run without --resume replaces it
    refused(capsys, ["run", "--sample", "--out", out, *FAST, "--test-every", "4", "--resume"],
            "--test-every 8, not 4", "--resume")


def _blank_photos(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (96, 64), (30 * i, 80, 140)).save(folder / f"{i}.png")
    return folder


def test_photos_where_too_few_register_are_one_line_and_nothing_is_written(tmp_path, capsys):
    photos = _blank_photos(tmp_path / "photos", 4)
    out = tmp_path / "run"
    refused(capsys, ["run", photos, "--out", out, *FAST], "COLMAP registered 0 of 4 photos", "too little texture")
    assert not out.exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("case", ["two photos", "no photos", "both", "foreign out", "weights with colmap",
                                  "bad iterations", "missing photo"])
def test_bad_input_is_one_line(case, tmp_path, capsys):
    photos = _blank_photos(tmp_path / "photos", 3)
    out = tmp_path / "run"
    args, mentions = {
        "two photos": ([photos / "0.png", photos / "1.png"], ["2 photos given", "at least 3"]),
        "no photos": ([], ["no photos given"]),
        "both": ([photos, "--sample"], ["PHOTOS or --sample"]),
        "foreign out": ([photos, "--out", photos], ["refusing to replace", str(photos)]),
        "weights with colmap": ([photos, "--weights", "w"], ["--weights", "fast3r"]),
        "bad iterations": ([photos, "--iterations", "0"], ["--iterations must be at least 1"]),
        "missing photo": ([photos / "0.png", photos / "9.png"], ["no such file", "9.png"]),
    }[case]
    if "--out" not in args:
        args = [*args, "--out", out]
    before = sorted(p.name for p in photos.iterdir())
    refused(capsys, ["run", *args], *mentions)
    assert not out.exists() and sorted(p.name for p in photos.iterdir()) == before


def test_view_of_a_folder_with_nothing_to_view_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, ["view", empty], "nothing to view", str(empty))


def test_the_step_by_step_splat_command_carries_the_photo_options(monkeypatch):
    """The report's `manyview splat` step must train what the run trained: exposure and the far shell included,
    and a boolean turned off is written as --no-FLAG (tyro's spelling), never as `--flag False`."""
    from manyview.cli.run import Run
    from manyview.pipeline.config import RunConfig

    monkeypatch.setattr("sys.argv", ["manyview"])  # not typed on a command line: the options are spelled out
    run = Run(photos=[Path("photos")], out=Path("o"), config=RunConfig(exposure=False))
    commands = run._commands(run.config.resolved())
    whole = commands[1]
    assert "--no-exposure" in whole and "--exposure False" not in whole
    splat = next(c for c in commands if c.startswith("manyview splat "))
    assert "--exposure" not in splat and "--far-points 20000 --densify.prune-scale-by-distance" in splat
    run = Run(photos=[Path("photos")], out=Path("o"), config=RunConfig(far_points=0))
    splat = next(c for c in run._commands(run.config.resolved()) if c.startswith("manyview splat "))
    assert "--exposure" in splat and "--far-points" not in splat
