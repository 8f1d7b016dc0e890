"""The 21 bad inputs and interruptions of issue 13, each with the class it stands for: every one is answered with
one line naming the option or file, a non-zero exit and no traceback, and leaves the user's files as they were
and no temporaries behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import hidden, listing, refused, splat_checkpoint

from manyview.cli.main import main


# --------------------------------------------------------------------------------------------- render's output folder
def test_render_refuses_a_folder_of_the_users_files(tiny_splat, tmp_path, capsys):
    """Class: an output folder that is not manyview's own is never written into."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "00000.png").write_bytes(b"my photo")
    before = listing(theirs)
    refused(capsys, ["render", tiny_splat, "--orbit", 3, "--out", theirs, "--width", 8], theirs, "refusing")
    assert listing(theirs) == before and hidden(tmp_path) == []


def test_render_replaces_its_own_earlier_output_without_stale_frames(tiny_splat, tmp_path, capsys):
    """Class: an output is replaced whole (built under a temporary name, renamed at the end), never merged."""
    out = tmp_path / "renders"
    assert main(["render", str(tiny_splat), "--orbit", "5", "--out", str(out), "--width", "8"]) == 0
    assert main(["render", str(tiny_splat), "--orbit", "3", "--out", str(out), "--width", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "render.json"]
    assert hidden(tmp_path) == []
    assert "wrote 3 images" in capsys.readouterr().out


def _interrupt_at_frame(monkeypatch, frame: int, error: BaseException):
    """Make the render loop fail at ``frame`` (0-based), as Ctrl-C or a bad frame would."""
    import manyview.splat

    real, calls = manyview.splat.render, []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) > frame:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(manyview.splat, "render", render)


def test_render_interrupted_keeps_nothing_and_says_so_truthfully(tiny_splat, tmp_path, capsys, monkeypatch):
    """Class: Ctrl-C leaves the old output (or none) and says what it kept; the message is true."""
    out = tmp_path / "renders"
    assert main(["render", str(tiny_splat), "--orbit", "2", "--out", str(out), "--width", "8"]) == 0
    earlier = listing(out)
    _interrupt_at_frame(monkeypatch, 2, KeyboardInterrupt())
    line = refused(capsys, ["render", tiny_splat, "--orbit", 4, "--out", out, "--width", 8], out, "left as it was",
                   code=130)
    assert line.startswith("manyview: interrupted")
    assert listing(out) == earlier and hidden(tmp_path) == []  # the earlier render, whole; no temporaries
    new = tmp_path / "new"
    refused(capsys, ["render", tiny_splat, "--orbit", 4, "--out", new, "--width", 8], "left as it was", code=130)
    assert not new.exists() and hidden(tmp_path) == []


def test_render_sweeps_the_temporaries_of_a_killed_run(tiny_splat, tmp_path, capsys):
    """Class: a run killed outright (SIGKILL: no cleanup can run) leaves a temporary that the next run removes."""
    out = tmp_path / "renders"
    code = ("import os, signal, sys; from manyview.io.atomic import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as tmp:\n"
            "    (tmp / '00048.png').write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(hidden(tmp_path)) == 1 and not out.exists()  # what SIGKILL leaves
    assert main(["render", str(tiny_splat), "--orbit", "2", "--out", str(out), "--width", "8"]) == 0
    assert hidden(tmp_path) == [] and sorted(p.name for p in out.iterdir())[:2] == ["00000.png", "00001.png"]


# --------------------------------------------------------------------------------------------- --out that is a file
def test_synth_refuses_to_replace_a_file_with_a_folder(tmp_path, capsys):
    """Class: --out naming an existing file is refused before any work; the file stays, nothing hidden appears."""
    target = tmp_path / "out"
    target.write_text("my file")
    refused(capsys, ["synth", "--out", target], target, "not a folder")
    assert target.read_text() == "my file" and hidden(tmp_path) == []


@pytest.mark.parametrize("command", ["splat", "render", "train"])
def test_out_that_is_a_file_or_cannot_be_made(command, tiny_dataset, tiny_splat, tmp_path, capsys):
    """Class: --out that is an existing file, or a place where no folder can be made, is one line naming --out's
    path (never a temporary name or "internal error")."""
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")

    def args(out: Path) -> list:
        return {"splat": ["splat", tiny_dataset, "--out", out, "--iterations", 1],
                "render": ["render", tiny_splat, "--orbit", 2, "--out", out],
                "train": ["train", "toy", "--train.steps", 1, "--train.out-dir", out]}[command]

    refused(capsys, args(blocker), blocker, "not a folder")
    refused(capsys, args(blocker / "run"), blocker / "run", "is a file")
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_out_where_nothing_may_be_written(tiny_splat, tmp_path, capsys):
    """Class: an unwritable place (here /proc, where even root cannot make folders) names the path."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    line = refused(capsys, ["render", tiny_splat, "--orbit", 2, "--out", "/proc/manyview_out"], "/proc/manyview_out")
    assert "cannot" in line and ".tmp" not in line


# --------------------------------------------------------------------------------------------- numbers out of range
@pytest.mark.parametrize("args, option", [
    (["synth", "--kind", "object", "--views", "0"], "--views must be at least 1, got 0"),
    (["synth", "--kind", "object", "--views", "-1"], "--views must be at least 1, got -1"),
    (["synth", "--kind", "room", "--height", "0"], "--height must be at least 1, got 0"),
    (["splat", "DATASET", "--max-width", "-1"], "--max-width must be at least 0"),
    (["splat", "DATASET", "--sh-degree", "9"], "--sh-degree must be between 0 and 3, got 9"),
    (["splat", "DATASET", "--iterations", "-5"], "--iterations must be at least 1, got -5"),
    (["reconstruct", "--sample", "--min-conf-percentile", "150"], "--min-conf-percentile must be between 0 and 100"),
    (["render", "SPLAT", "--orbit", "2", "--background", "2", "-1", "0"], "--background must be three numbers"),
])
def test_numbers_out_of_range_are_refused_where_parsed(args, option, tiny_dataset, tiny_splat, tmp_path, capsys):
    """Class: every option is validated where it is parsed, with the option's own name, before any work or
    output (these reached the library as ZeroDivisionError & co, or were accepted with exit 0)."""
    args = [{"DATASET": tiny_dataset, "SPLAT": tiny_splat}.get(a, a) for a in args] + ["--out", tmp_path / "out"]
    refused(capsys, args, option)
    assert list(tmp_path.iterdir()) == []


def test_a_ply_without_gaussians_is_refused(tiny_splat, tmp_path, capsys):
    """Class: input that is well-formed but empty is refused, not rendered into black frames."""
    from manyview.splat import Gaussians, read_ply, write_ply
    from manyview.splat.gaussians import PARAMETER_NAMES

    g = read_ply(tiny_splat)
    empty = tmp_path / "empty" / "splat.ply"
    write_ply(empty, Gaussians.from_dict({n: getattr(g, n)[:0] for n in PARAMETER_NAMES}))
    assert len(read_ply(empty)) == 0
    refused(capsys, ["render", empty, "--cameras", tiny_splat.parent / "transforms.json", "--out", tmp_path / "r"],
            empty, "no Gaussians")
    assert not (tmp_path / "r").exists()


def test_images_too_small_to_reconstruct_are_refused(tmp_path, capsys):
    """Class: input too small to carry any structure is refused, naming the file, not turned into points."""
    from PIL import Image

    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (1, 1), (i * 50, 0, 0)).save(folder / f"{i}.png")
    refused(capsys, ["reconstruct", folder, "--out", tmp_path / "out"], folder / "0.png", "1x1 pixels")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- an option that does nothing
def test_synth_seed_and_views_need_a_generated_kind(tmp_path, capsys):
    """Class: an option that would be silently ignored is an error saying what makes it work."""
    refused(capsys, ["synth", "--seed", 3, "--views", 4, "--out", tmp_path / "s"], "--views", "--seed", "--kind")
    assert not (tmp_path / "s").exists()
    assert main(["synth", "--seed", "3", "--views", "2", "--height", "16", "--width", "16", "--kind", "object",
                 "--out", str(tmp_path / "s")]) == 0
    assert "wrote 2 views (16x16)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncated gaussians.safetensors", "garbage state.pt"])
def test_resume_from_a_damaged_checkpoint_names_the_file_and_the_way_on(damage, tiny_dataset, tmp_path, capsys):
    """Class: a damaged file is named, called damaged, and the message says how to go on; nothing changes."""
    out = tmp_path / "run"
    ckpt = splat_checkpoint(tiny_dataset, out)
    name = damage.split()[1]
    file = ckpt / name
    if name.endswith(".safetensors"):
        file.write_bytes(file.read_bytes()[:1000])
    else:
        file.write_text("garbage\n")
    before = listing(out)
    line = refused(capsys, ["splat", tiny_dataset, "--out", out, "--iterations", 3, "--sh-degree", 0,
                            "--max-width", 16, "--resume"], file, "damaged", "without --resume")
    assert "weights_only" not in line and "file an issue" not in line
    assert listing(out) == before


# --------------------------------------------------------------------------------------------- inputs named by file
def test_nvs_names_an_empty_image_file(tiny_dataset, tmp_path, capsys):
    """Class: a bad input file is named, not reported as a count mismatch."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "00000.png").write_bytes(b"")
    refused(capsys, ["nvs", "--inputs", folder, "--cameras", tiny_dataset, "--orbit", 2, "--out", tmp_path / "o"],
            folder / "00000.png", "empty")
    assert not (tmp_path / "o").exists()


def test_a_pickle_as_weights_is_refused_as_a_pickle(tmp_path, capsys):
    """Class: the message is about the file's real problem (a pickle carrying code), not a missing config.json."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    weights = tmp_path / "model.pt"
    torch.save({"model": Payload()}, weights)
    line = refused(capsys, ["reconstruct", "--sample", "--weights", weights, "--out", tmp_path / "out"], weights,
                   "pickle")
    assert "config.json" not in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- help and messages
def test_top_level_help_describes_train_and_eval(capsys):
    """Class: help shows the project's words, never Python's (typing.Union's docstring)."""
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "Union" not in out and "type checker" not in out
    assert "Train a model" in out and "Score models" in out


HELPS = [["synth"], ["info"], ["reconstruct"], ["nvs"], ["splat"], ["render"], ["train"], ["train", "fast3r"],
         ["train", "fast3r", "tiny"], ["train", "lvsm", "bundled"], ["train", "efficient-lvsm", "tiny"],
         ["train", "toy"], ["eval"], ["eval", "reconstruction"], ["eval", "nvs"], []]


@pytest.mark.parametrize("command", HELPS, ids=lambda c: " ".join(c) or "manyview")
def test_every_help_mentions_debug_and_no_path_of_this_machine(command, capsys):
    """Class: every --help is clean: it tells about --debug and shows no path of the machine it was written on."""
    with pytest.raises(SystemExit) as stop:
        main(command + ["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out
    for private in ("/work/", "/home/", "/root/", "/tmp/", str(Path.home())):
        assert private not in out, private


def test_an_error_after_a_progress_bar_starts_its_own_line(tiny_splat, tmp_path, capsys, monkeypatch):
    """Class: the error line never lands on a progress bar's line (a bar the error left open is ended first; one
    closed on the way out has cleared its line with a carriage return)."""
    from manyview.errors import ManyviewError

    monkeypatch.setenv("MANYVIEW_QUIET", "0")
    _interrupt_at_frame(monkeypatch, 1, ManyviewError("a bad frame"))
    assert main(["render", str(tiny_splat), "--orbit", "3", "--out", str(tmp_path / "r"), "--width", "8"]) == 2
    err = capsys.readouterr().err
    assert "render" in err.split("manyview: error:")[0]  # a bar was drawn first
    assert any(line.startswith("manyview: error: a bad frame") for line in re.split(r"[\r\n]", err)), repr(err)
    assert not (tmp_path / "r").exists() and hidden(tmp_path) == []


def test_a_bar_left_open_by_an_error_is_ended_on_its_own_line(capsys, monkeypatch):
    """A manual bar that an exception leaves open (nothing closes it) is ended with a newline before the error
    is printed, showing where the work stopped."""
    from manyview.errors import ManyviewError
    from manyview.progress import progress

    monkeypatch.setenv("MANYVIEW_QUIET", "0")

    class Command:
        def run(self):
            bar = progress(total=4, desc="work")
            bar.update(2)
            raise ManyviewError("stopped at 2")

    monkeypatch.setattr("manyview.cli.main._parse", lambda args: Command())
    assert main(["synth"]) == 2
    err = capsys.readouterr().err
    assert "2/4" in err and err.endswith("\nmanyview: error: stopped at 2\n"), repr(err)
