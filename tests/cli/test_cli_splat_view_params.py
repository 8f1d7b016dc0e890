"""``manyview splat`` with the real-photo options: per-photo exposure, pose refinement, a far-field shell and
distance-aware pruning reach the trainer, its outputs say so, and a resume needs the same per-view settings."""

import json

import pytest

from manyview.cli.main import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("splat_cli_views") / "ds"
    assert main(["synth", "--kind", "object", "--views", "5", "--height", "12", "--width", "16",
                 "--out", str(root)]) == 0
    return root


def test_splat_options_for_photos(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MANYVIEW_QUIET", "1")
    out = tmp_path / "run"
    args = ["splat", str(dataset), "--out", str(out), "--sh-degree", "0", "--checkpoint-every", "2",
            "--exposure", "--pose-refine", "--far-points", "40", "--densify.prune-scale-by-distance"]
    assert main(args + ["--iterations", "3"]) == 0
    result = json.loads((out / "eval.json").read_text())
    config = result["config"]
    assert config["exposure"] and config["pose_refine"] and config["far_points"] == 40
    assert config["densify"]["prune_scale_by_distance"]
    assert result["psnr_exposure_fitted"] >= result["psnr"] - 1e-4  # a fitted transform can only help (before clamping)
    assert "exposure fitted" in capsys.readouterr().out
    views = json.loads((out / "views.json").read_text())
    assert views["exposure"] and views["pose_refine"] and len(views["views"]) == 5
    assert [v["train"] for v in views["views"]] == [False, True, True, True, True]
    assert main(args + ["--iterations", "4", "--resume"]) == 0
    assert json.loads((out / "eval.json").read_text())["resumed_from"] == 3
    plain = tmp_path / "plain"
    assert main(["splat", str(dataset), "--out", str(plain), "--sh-degree", "0", "--iterations", "2"]) == 0
    capsys.readouterr()
    assert main(["splat", str(dataset), "--out", str(plain), "--sh-degree", "0", "--iterations", "3", "--resume",
                 "--exposure"]) == 2
    assert "no per-view parameters" in capsys.readouterr().err
