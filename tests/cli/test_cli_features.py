"""``manyview features``: an export read back (PLY properties == npz, grids match strides, key points within K),
Gaussians as points, a trained model's features, and each bad input refused with one clear line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import hidden, refused

from manyview.cli.main import main
from manyview.features.export import read_feature_ply


def _read_back(out, views):
    record = json.loads((out / "features.json").read_text())
    pts, ply_feats = read_feature_ply(out / "points.ply")
    npz = np.load(out / "features3d.npz")
    np.testing.assert_array_equal(ply_feats.numpy(), npz["features"])
    np.testing.assert_array_equal(pts.numpy(), npz["points"])
    C = npz["features"].shape[1]
    assert len(record["views"]) == views and hidden(out.parent) == []
    for v in record["views"]:
        f2d = np.load(out / v["features2d"])
        H, W = v["image_size"]
        assert f2d.dtype == np.float16 and f2d.shape == (*v["grid"], C)
        assert f2d.shape[0] * v["stride"][0] == pytest.approx(H) and f2d.shape[1] * v["stride"][1] == pytest.approx(W)
        kp2 = np.load(out / v["keypoints2d"])
        assert kp2["xy"].shape[1] == 2 and kp2["descriptors"].shape[1] == C
        assert np.all((kp2["xy"] >= 0) & (kp2["xy"] <= [W, H]))
    kp = np.load(out / "keypoints.npz")
    np.testing.assert_allclose(kp["positions"], npz["points"][kp["indices"]])
    assert kp["descriptors"].shape == (len(kp["positions"]), C)
    return record, npz


def test_export_round_trip_without_weights_says_what_the_features_are(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "feats"
    assert main(["features", str(tiny_dataset), "--out", str(out), "--dim", "8", "--keypoints", "16"]) == 0
    printed = capsys.readouterr().out
    assert "no ConDense model (" in printed and "PCA" in printed
    record, npz = _read_back(out, 8)
    assert record["source"] == "teacher" and record["dim"] == 8 and record["pca"]
    assert npz["features"].shape == (500, 8) and record["keypoints"] <= 16
    seen = npz["views_seeing"] > 0
    assert seen.mean() > 0.8, "the points were sampled from what the views see"
    assert np.all(npz["features"][~seen] == 0) and np.abs(npz["features"][seen]).sum(1).min() > 0
    # again into the same folder: replaced (it is a features output), nothing else left beside it
    assert main(["features", str(tiny_dataset), "--out", str(out), "--dim", "4", "--keypoints", "16"]) == 0
    assert json.loads((out / "features.json").read_text())["dim"] == 4 and hidden(tmp_path) == []


def test_gaussians_are_points_and_a_trained_model_gives_its_features(tiny_dataset, tiny_splat, tmp_path):
    from manyview.features.condense import ConDense, ConDenseConfig
    from manyview.features.student3d import PointBackboneConfig

    out = tmp_path / "splat_feats"
    assert main(["features", str(tiny_splat), "--views", str(tiny_dataset), "--out", str(out), "--keypoints",
                 "8", "--teacher", "efficientnet-lite0"]) == 0
    record, npz = _read_back(out, 8)
    assert npz["points"].shape == (200, 3) and record["dim"] == 152 and not record["pca"]
    torch.manual_seed(0)
    ConDense(ConDenseConfig(dim=6, head_hidden=8, point=PointBackboneConfig(width=8, depth=1, heads=2, k=4))) \
        .save_pretrained(tmp_path / "model")
    out = tmp_path / "model_feats"
    assert main(["features", str(tiny_dataset), "--out", str(out), "--weights", str(tmp_path / "model")]) == 0
    record, npz = _read_back(out, 8)
    assert record["source"] == "condense" and npz["features"].shape == (500, 6)
    assert np.all(npz["views_seeing"] == -1)


def test_the_bundled_model_is_the_default_and_a_teacher_or_other_dim_is_asked_for(tiny_dataset, tmp_path, capsys,
                                                                                  monkeypatch):
    import manyview.assets
    from manyview.features.condense import ConDense, ConDenseConfig
    from manyview.features.student3d import PointBackboneConfig

    torch.manual_seed(0)
    ConDense(ConDenseConfig(dim=6, head_hidden=8, point=PointBackboneConfig(width=8, depth=1, heads=2, k=4))) \
        .save_pretrained(tmp_path / "bundled")
    monkeypatch.setattr(manyview.assets, "bundled_model_dir", lambda name: tmp_path / "bundled")
    assert main(["features", str(tiny_dataset), "--out", str(tmp_path / "a"), "--keypoints", "8"]) == 0
    record = json.loads((tmp_path / "a" / "features.json").read_text())
    assert record["source"] == "condense" and record["dim"] == 6 and record["weights"] == str(tmp_path / "bundled")
    assert main(["features", str(tiny_dataset), "--out", str(tmp_path / "b"), "--keypoints", "8", "--dim", "4"]) == 0
    assert "--dim 4, the bundled model's is 6" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "features.json").read_text())["source"] == "teacher"
    refused(capsys, ["features", tiny_dataset, "--out", tmp_path / "c", "--teacher", "efficientnet-lite0",
                     "--weights", tmp_path / "bundled"], "--teacher", "--weights")


def test_bad_inputs_are_one_clear_line(tiny_dataset, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from manyview.io.dataset import load_dataset, write_dataset

    out = tmp_path / "out"
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((tiny_dataset / "images").iterdir())[:3]:
        shutil.copy(f, photos / f.name)
    refused(capsys, ["features", photos, "--out", out], "manyview reconstruct")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no DINOv2 download there
    refused(capsys, ["features", tiny_dataset, "--out", out, "--teacher", "dinov2-vits14"], "dinov2_vits14",
            "download")
    torch.manual_seed(0)
    from manyview.features.condense import ConDense, ConDenseConfig
    from manyview.features.student3d import PointBackboneConfig

    ConDense(ConDenseConfig(dim=6, head_hidden=8, point=PointBackboneConfig(width=8, depth=1, heads=2, k=4))) \
        .save_pretrained(tmp_path / "model")
    refused(capsys, ["features", tiny_dataset, "--out", out, "--weights", tmp_path / "model", "--dim", "16"],
            "feature dimension 6", "--dim 16")
    no_points = tmp_path / "no_points"
    write_dataset(no_points, load_dataset(tiny_dataset))
    refused(capsys, ["features", no_points, "--out", out], "no points", "manyview reconstruct")
    resized = tmp_path / "resized"
    shutil.copytree(tiny_dataset, resized)
    first = sorted((resized / "images").iterdir())[0]
    Image.open(first).resize((48, 24)).save(first)  # 24 x 32 camera, 24 x 48 image: another aspect ratio
    refused(capsys, ["features", resized, "--out", out], "00000.png", "does not match")
    refused(capsys, ["features", tiny_dataset, "--out", out, "--dim", "0"], "--dim")
    refused(capsys, ["features", tiny_dataset, "--out", out, "--dim", "999"], "--dim 999")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    refused(capsys, ["features", tiny_dataset, "--out", tmp_path / "other"], "refusing to replace")
    assert not out.exists() and hidden(tmp_path) == []
