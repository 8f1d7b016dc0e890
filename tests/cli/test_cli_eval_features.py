"""``manyview eval features``: a small run over a model, its teacher, a synthetic scene and a posed dataset writes the
JSON it prints; bad input is refused with one clear line."""

from __future__ import annotations

import json

import torch
from cli_helpers import refused

from manyview.cli.main import main
from manyview.features.condense import ConDense, ConDenseConfig
from manyview.features.student3d import PointBackboneConfig


def test_eval_features_writes_every_table(tiny_dataset, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "model"
    ConDense(ConDenseConfig(dim=8, head_hidden=16, point=PointBackboneConfig(width=16, depth=1, heads=2, k=4))) \
        .save_pretrained(weights)
    out = tmp_path / "eval.json"
    assert main(["eval", "features", "--weights", str(weights), "--scenes", "1", "--views", "2", "--size", "64",
                 "--points", "128", "--keypoints", "16", "--real", str(tiny_dataset), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["teacher"] == "efficientnet-lite0" and report["weights"] == str(weights)
    for method in ("teacher", "student2d", "rendered3d"):
        syn = report["synthetic"][method]
        assert syn["recall"]["all"]["pairs"] == 2 and syn["recall"]["all"]["matches"] > 0
        assert syn["keypoints"]["all"]["pairs"] == 4
        real = report["real"][tiny_dataset.name][method]["recall"]["all"]
        assert real["pairs"] == 28 and 0 <= real["recall@20"] <= 1
        assert f"| {method} |" in printed
    assert report["real"][tiny_dataset.name]["info"]["points"] == 500


def test_eval_features_bad_input(tmp_path, capsys):
    refused(capsys, ["eval", "features", "--no-synthetic", "--out", str(tmp_path / "a.json")], "--real")
    refused(capsys, ["eval", "features", "--real", str(tmp_path / "missing"), "--out", str(tmp_path / "b.json")],
            "reconstruction folder", "missing")
    refused(capsys, ["eval", "features", "--views", "1"], "--views")
    refused(capsys, ["eval", "features", "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.json")],
            "ConDense weights not found")
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (16, 16)).save(photos / f"{i}.png")
    refused(capsys, ["eval", "features", "--no-synthetic", "--real", str(photos), "--out", str(tmp_path / "d.json")],
            "manyview reconstruct")
    assert not any(tmp_path.glob("*.json"))
