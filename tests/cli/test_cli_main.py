"""The command line: every subcommand documents itself, and bad input is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from manyview.cli.main import _commands, main


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_info_on_a_missing_path_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["info", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err


def test_info_on_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err


def test_debug_shows_the_traceback(tmp_path):
    from manyview.errors import ManyviewError

    with pytest.raises(ManyviewError):
        main(["info", str(tmp_path / "nowhere"), "--debug"])


def test_synth_writes_a_dataset_that_info_describes(tmp_path, capsys):
    out = tmp_path / "scene"
    assert main(["synth", "--out", str(out), "--kind", "room", "--views", "3", "--height", "48", "--width", "64"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    described = capsys.readouterr().out
    assert '"num_views": 3' in described


def test_synth_supersample_averages_sub_pixel_samples(tmp_path, capsys):
    """--supersample s writes the generator's s x s area-sampled RGB (one aliased ray per pixel with 1)."""
    import torch

    from manyview.io.dataset import load_dataset
    from manyview.synth import generate

    for s in (1, 3):
        out = tmp_path / f"ss{s}"
        assert main(["synth", "--out", str(out), "--kind", "object", "--views", "2", "--height", "24", "--width",
                     "32", "--supersample", str(s)]) == 0
        _, expected = generate(0, kind="object", num_views=2, height=24, width=32, supersample=s)
        written = load_dataset(out).images
        assert (written - expected.images).abs().max() <= 1 / 255 + 1e-6
    assert main(["synth", "--out", str(tmp_path / "bad"), "--supersample", "0"]) == 2
    assert "--supersample" in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    # The installed entry point, as a user runs it: non-zero exit, one line on stderr, nothing on stdout.
    result = subprocess.run([sys.executable, "-m", "manyview.cli.main", "info", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_accepts_preset_as_an_option():
    from manyview.cli.main import _preset_as_subcommand

    assert _preset_as_subcommand(["train", "fast3r", "--preset", "bundled", "--out", "x"]) == \
        ["train", "fast3r", "bundled", "--out", "x"]
    assert _preset_as_subcommand(["train", "lvsm", "--preset=tiny"]) == ["train", "lvsm", "tiny"]
    assert _preset_as_subcommand(["train", "condense", "--preset", "bundled", "--out", "x"]) == \
        ["train", "condense", "bundled", "--out", "x"]
    assert _preset_as_subcommand(["train", "condense", "--preset=ablation-anchor"]) == \
        ["train", "condense", "ablation-anchor"]
    assert _preset_as_subcommand(["info", "--preset", "x"]) == ["info", "--preset", "x"]


def test_train_condense_runs_and_writes_a_loadable_model(tmp_path):
    """`manyview train condense` trains the ConDense task on the shared trainer and leaves a model folder."""
    from manyview.cli.main import main
    from manyview.features.condense import ConDense

    out = tmp_path / "cond"
    assert main(["train", "condense", "--preset", "tiny", "--train.steps", "2", "--out", str(out)]) == 0
    model = ConDense.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_synth_writes_the_sample_photos_of_run_as_files(tmp_path, capsys):
    """``run --sample``'s step-by-step commands start from these files: they must be the photos it runs on."""
    import numpy as np
    from PIL import Image

    from manyview.synth import sample_photos

    out = tmp_path / "photos"
    assert main(["synth", "--out", str(out), "--kind", "sample-photos"]) == 0
    files = sorted((out / "images").iterdir())
    views = sample_photos()[1]
    assert len(files) == len(views) == 16
    first = np.asarray(Image.open(files[0]), dtype=np.float32) / 255
    expected = views.images[0].permute(1, 2, 0).numpy()
    assert first.shape == expected.shape and np.abs(first - expected).max() <= 1 / 255 + 1e-6
    assert main(["synth", "--out", str(tmp_path / "x"), "--kind", "sample-photos", "--views", "3"]) == 2
