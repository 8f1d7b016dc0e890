"""``manyview splat`` and ``manyview render`` end to end on a tiny dataset written by ``manyview synth``."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from manyview.cli.main import main
from manyview.splat import read_ply


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("splat_cli") / "ds"
    assert main(["synth", "--kind", "object", "--views", "8", "--height", "24", "--width", "32",
                 "--out", str(root)]) == 0
    return root


@pytest.mark.slow
def test_splat_train_resume_and_render(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MANYVIEW_QUIET", "1")
    out = tmp_path / "run"
    args = ["splat", str(dataset), "--out", str(out), "--sh-degree", "1", "--checkpoint-every", "4",
            "--max-width", "16"]
    assert main(args + ["--iterations", "6"]) == 0
    first = json.loads((out / "eval.json").read_text())
    assert first["step"] == 6 and first["test_views"] == [0] and np.isfinite(first["psnr"])
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000006"]
    assert len(read_ply(out / "splat.ply")) == first["gaussians"]

    assert main(args + ["--iterations", "9", "--resume"]) == 0  # continues from step 6
    second = json.loads((out / "eval.json").read_text())
    assert second["step"] == 9 and second["config"]["iterations"] == 9 and second["resumed_from"] == 6
    assert first["resumed_from"] is None
    assert "held-out PSNR" in capsys.readouterr().out

    renders = tmp_path / "renders"
    assert main(["render", str(out / "splat.ply"), "--orbit", "3", "--out", str(renders), "--width", "20"]) == 0
    pngs = sorted(renders.glob("*.png"))
    assert [p.name for p in pngs] == ["00000.png", "00001.png", "00002.png"]
    frames = [np.asarray(Image.open(p)) for p in pngs]
    assert all(f.shape == (15, 20, 3) for f in frames)  # trained at 12x16 (--max-width 16), rendered 20 wide
    assert any(f.std() > 0 for f in frames)  # something was drawn

    direct = tmp_path / "direct"
    assert main(["render", str(out / "splat.ply"), "--cameras", str(dataset), "--out", str(direct)]) == 0
    assert len(list(direct.glob("*.png"))) == 8
    assert np.asarray(Image.open(direct / "00000.png")).shape == (24, 32, 3)  # the dataset's cameras, full size

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(out / "splat.ply", lonely / "scene.ply")
    capsys.readouterr()
    assert main(["render", str(lonely / "scene.ply"), "--out", str(tmp_path / "r")]) == 2
    assert "no cameras" in capsys.readouterr().err
    # an orbit needs no cameras: it circles the Gaussians (tests/cli/test_cli_render_orbit.py)
    assert main(["render", str(lonely / "scene.ply"), "--orbit", "3", "--out", str(tmp_path / "r"),
                 "--width", "8"]) == 0


def test_splat_refuses_unposed_and_mismatched_input(dataset, tmp_path, capsys):
    assert main(["splat", str(dataset / "images"), "--out", str(tmp_path / "x")]) == 2
    assert "manyview reconstruct" in capsys.readouterr().err

    broken = tmp_path / "tj"
    shutil.copytree(dataset, broken, ignore=shutil.ignore_patterns("manyview.json", "sparse"))
    meta = json.loads((broken / "transforms.json").read_text())
    meta["w"], meta["h"] = 50, 50
    (broken / "transforms.json").write_text(json.dumps(meta))
    assert main(["splat", str(broken), "--out", str(tmp_path / "y")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "y" / "splat.ply").exists()
