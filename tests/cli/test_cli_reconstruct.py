"""``manyview reconstruct`` end to end on real photos with a randomly initialised tiny model, and its refusals."""

import dataclasses
import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch

from cli_helpers import hidden, refused

from manyview.cli import reconstruct as cli_reconstruct
from manyview.cli.main import main
from manyview.io.gltf import GLB_MAGIC
from manyview.io.ply import read_ply
from manyview.io.transforms_json import read_transforms_json
from manyview.models.fast3r import Fast3R
from manyview.models.pairwise import PairwiseConfig, PairwiseNet

FAMILY = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "family"
needs_family = pytest.mark.skipif(not FAMILY.is_dir(), reason=f"real data not found at {FAMILY}")


@pytest.fixture(scope="module")
def fast3r_dir(tmp_path_factory):
    torch.manual_seed(0)
    return Fast3R("tiny").save_pretrained(tmp_path_factory.mktemp("fast3r_tiny"))


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


@needs_family
def test_reconstructs_real_photos_into_readable_files(fast3r_dir, tmp_path, capsys):
    import pycolmap

    out = tmp_path / "out"
    code, err = _run(capsys, "reconstruct", FAMILY, "--weights", fast3r_dir, "--out", out, "--max-views", 4,
                     "--size", 64, "--device", "cpu")
    assert code == 0, err
    names = ["000.jpg", "009.jpg", "019.jpg", "028.jpg"]  # 4 evenly spaced of 29
    summary = json.loads((out / "summary.json").read_text())
    assert summary["views"] == 4 and summary["names"] == names and summary["model"] == "fast3r"
    assert summary["image_size"] == [64, 64] and summary["weights"] == str(fast3r_dir)  # <= 224: square crops
    assert summary["mean_confidence"] > 1 and summary["memory"]["peak_bytes"] > 0
    assert set(summary["time_s"]) == {"inference", "cameras", "total"} and summary["wall_time_s"] > 0

    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert len(model.images) == 4 and len(model.points3D) == summary["points_written"] > 0
    cam = next(iter(model.cameras.values()))
    assert (cam.width, cam.height) == (64, 64) and cam.params[0] > 0  # untrained weights: the default focal
    views = read_transforms_json(out / "transforms.json")  # its file paths point at the written images
    assert views.images.shape == (4, 3, 64, 64)
    by_name = {Path(im.name).stem: im for im in model.images.values()}
    for i, name in enumerate(names):  # COLMAP and transforms.json hold the same poses
        w2c = torch.from_numpy(by_name[Path(name).stem].cam_from_world().matrix()).float()
        assert torch.allclose(views.cameras.w2c[i, :3], w2c, atol=1e-4)
    cloud = read_ply(out / "points.ply")
    assert len(cloud) == summary["points_written"] and cloud.rgb is not None
    magic, version, length = struct.unpack("<III", (out / "scene.glb").read_bytes()[:12])
    assert magic == GLB_MAGIC and version == 2 and length == (out / "scene.glb").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temporary folder left behind

    # a second run replaces the earlier output
    code, err = _run(capsys, "reconstruct", FAMILY / "000.jpg", FAMILY / "001.jpg", "--weights", fast3r_dir,
                     "--out", out, "--size", 32, "--device", "cpu")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["views"] == 2


@needs_family
def test_pairwise_model_and_duplicate_images(tmp_path, capsys):
    torch.manual_seed(0)
    config = PairwiseConfig(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=4,
                            dec_num_heads=2, feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8])
    weights = PairwiseNet(config).save_pretrained(tmp_path / "pairwise")
    image = FAMILY / "003.jpg"
    code, err = _run(capsys, "reconstruct", image, image, FAMILY / "004.jpg", "--weights", weights, "--out",
                     tmp_path / "out", "--size", 32, "--ga-iterations", 3, "--device", "cpu")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == "pairwise" and summary["views"] == 3 and summary["num_pairs"] == 6
    assert len(list((tmp_path / "out" / "images").iterdir())) == 3  # duplicate names made unique


def test_bundled_model_is_the_default(fast3r_dir, tmp_path, capsys, monkeypatch):
    import manyview.assets

    monkeypatch.setattr(manyview.assets, "bundled_model_dir", lambda model: None)  # an installation without it
    images = tmp_path / "images"
    images.mkdir()
    for k in range(2):
        torch.manual_seed(k)
        from manyview.io.image_writers import write_image

        write_image(images / f"{k}.png", torch.rand(3, 40, 56))
    code, err = _run(capsys, "reconstruct", images, "--out", tmp_path / "out", "--size", 32)
    assert code == 2 and "--weights" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(manyview.assets, "bundled_model_dir", lambda model: fast3r_dir if model == "fast3r" else None)
    code, err = _run(capsys, "reconstruct", images, "--out", tmp_path / "out", "--size", 32, "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["weights"] == "bundled:fast3r_bundled"


def test_default_size_is_the_size_the_weights_were_trained_at(tmp_path, capsys):
    model = Fast3R("tiny")
    model.config.encoder_args.img_size = 48  # what the trainer records for 48 x 48 training crops
    weights = model.save_pretrained(tmp_path / "w48")
    images = tmp_path / "images"
    images.mkdir()
    from manyview.io.image_writers import write_image

    for k in range(2):
        write_image(images / f"{k}.png", torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(k)))
    code, err = _run(capsys, "reconstruct", images, "--weights", weights, "--out", tmp_path / "a", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["image_size"] == [48, 48]
    code, err = _run(capsys, "reconstruct", images, "--weights", weights, "--out", tmp_path / "b", "--size", 256,
                     "--device", "cpu")
    assert code == 0, err  # above 224 the aspect ratio is kept: long side 256, multiples of 16
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["image_size"] == [160, 256]


@needs_family
def test_corrupt_image_among_good_ones_writes_nothing(fast3r_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("000.jpg", "001.jpg", "002.jpg"):
        shutil.copy(FAMILY / name, folder / name)
    (folder / "001.jpg").write_bytes((FAMILY / "001.jpg").read_bytes()[:600])  # truncated JPEG
    code, err = _run(capsys, "reconstruct", folder, "--weights", fast3r_dir, "--out", tmp_path / "out",
                     "--size", 32)
    assert code == 2 and len(err.splitlines()) == 1 and "001.jpg" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


@needs_family
def test_bad_checkpoints_and_outputs_give_one_line_errors(fast3r_dir, tmp_path, capsys):
    images = [FAMILY / "000.jpg", FAMILY / "001.jpg"]

    def run(weights, out=tmp_path / "out"):
        code, err = _run(capsys, "reconstruct", *images, "--weights", weights, "--out", out, "--size", 32)
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    wrong = tmp_path / "wrong"
    shutil.copytree(fast3r_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["decoder_args"]["embed_dim"] = 64
    (wrong / "config.json").write_text(json.dumps(config))
    assert "checkpoint does not fit the model: shape mismatch for decoder." in run(wrong)

    unknown = tmp_path / "unknown"
    shutil.copytree(fast3r_dir, unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["head_args"]["colour_head"] = True
    (unknown / "config.json").write_text(json.dumps(config))
    assert "unknown fields in head_args: colour_head" in run(unknown)

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(fast3r_dir / "config.json", evil / "config.json")
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, evil / "model.pt")
    assert "refusing to load" in run(evil) and not marker.exists()

    assert "no such file or folder" in run(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "refusing to replace" in run(fast3r_dir, out=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()


def test_sample_scene_is_reconstructed_and_scored_against_its_ground_truth(fast3r_dir, tmp_path, capsys,
                                                                              monkeypatch):
    from manyview.recon import reconstruct as recon_module

    real = recon_module.reconstruct
    truth = cli_reconstruct.Reconstruct._sample_views(32)

    def exact_cameras(images, model, **kw):  # the pipeline with perfect cameras: every score must be 100
        rec = real(images, model, **kw)
        assert torch.equal(images, truth.images)  # the sample's views, resized to --size
        return dataclasses.replace(rec, cameras=truth.cameras)

    monkeypatch.setattr(recon_module, "reconstruct", exact_cameras)
    code, err = _run(capsys, "reconstruct", "--sample", "--weights", fast3r_dir, "--out", tmp_path / "s",
                     "--size", 32, "--device", "cpu")
    assert code == 0, err
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["views"] == 6 and summary["ground_truth"]["RRA@15"] == summary["ground_truth"]["mAA@30"] == 100
    code, err = _run(capsys, "reconstruct", tmp_path, "--sample", "--weights", fast3r_dir, "--out", tmp_path / "t")
    assert code == 2 and "not both" in err and not (tmp_path / "t").exists()


def test_the_shipped_bundled_model_reconstructs_the_sample(tmp_path, capsys):
    """README command one: the weights in the package load in the released layout and score the embedded sample."""
    from manyview.assets import bundled_model_dir

    bundled = bundled_model_dir("fast3r")
    assert bundled is not None, "no bundled Fast3R in the package"
    weights = bundled / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 25 * 2**20
    assert (bundled / "training_log.csv").is_file() and (bundled / "RECIPE.md").is_file()
    code, err = _run(capsys, "reconstruct", "--sample", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["weights"] == "bundled:fast3r_bundled" and summary["views"] == 6
    assert (tmp_path / "out" / "points.ply").stat().st_size > 0
    assert all(math.isfinite(summary["ground_truth"][k]) for k in ("RRA@15", "RTA@15", "mAA@30"))


# ------------------------------------------------------------------------------------ --model colmap, --refine
def _check_pinhole_dataset(out: Path, summary: dict) -> None:
    """OUT holds undistorted images with PINHOLE cameras in COLMAP and transforms.json, as summary.json says."""
    import pycolmap

    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert {cam.model_name for cam in model.cameras.values()} == {"PINHOLE"}
    assert len(model.images) == summary["views"] == len(summary["names"])
    views = read_transforms_json(out / "transforms.json")
    assert list(views.images.shape[-2:]) == summary["image_size"]
    assert json.loads((out / "manyview.json").read_text())["num_views"] == summary["views"]
    assert (out / "scene.glb").is_file() and len(read_ply(out / "points.ply")) == summary["points_written"] > 0


def test_colmap_reconstructs_the_sample_undistorted_and_scores_it(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["reconstruct", "--sample", "--model", "colmap", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "colmap" and summary["registered"] == summary["photos"] == 6
    assert summary["unregistered"] == [] and summary["camera_model"] == "SIMPLE_RADIAL" and summary["undistorted"]
    assert len(summary["camera_params"]) == 4 and summary["shared_camera"]
    assert summary["ground_truth"]["RRA@5"] == 100.0 and summary["ground_truth"]["RTA@5"] == 100.0
    assert set(summary["time_s"]) == {"features", "matching", "mapping", "undistortion", "total"}
    _check_pinhole_dataset(out, summary)
    assert "registered 6 of 6 photos with COLMAP" in captured.out and "not registered" not in captured.out


def test_refine_sharpens_the_bundled_fast3r_cameras_on_the_sample(tmp_path, capsys):
    """The bundled Fast3R alone gets RRA@15 47 % on the sample; refined by bundle adjustment, every pair is
    within 5 degrees."""
    pytest.importorskip("manyview.assets")
    from manyview.assets import bundled_model_dir

    if bundled_model_dir("fast3r") is None:
        pytest.skip("no bundled Fast3R in this installation")
    out = tmp_path / "out"
    code = main(["reconstruct", "--sample", "--refine", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "fast3r+ba" and summary["registered"] == 6 and summary["unregistered"] == []
    assert summary["ground_truth"]["RRA@5"] == 100.0, summary["ground_truth"]
    assert summary["network_image_size"] == [112, 112] and summary["weights"] == "bundled:fast3r_bundled"
    _check_pinhole_dataset(out, summary)
    assert "with Fast3R + bundle adjustment" in captured.out


def _synthetic_photos(folder: Path, n: int = 6, size: int = 192) -> list[Path]:
    from manyview.io.image_writers import write_image
    from manyview.synth import generate

    _, views = generate(3, "object", n, size, size, arc_deg=60.0, supersample=2)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"view{i}.png" for i in range(n)]
    for path, image in zip(paths, views.images):
        write_image(path, image)
    return paths


def test_colmap_names_the_photos_it_could_not_register(tmp_path, capsys):
    """Five views of one scene and a photo of nothing in it: the odd one is named in summary.json and on the
    terminal, the others are written."""
    from PIL import Image

    photos = tmp_path / "photos"
    _synthetic_photos(photos, 5)
    noise = (torch.rand(192, 192, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(noise).save(photos / "zz_stray.png")
    out = tmp_path / "out"
    code = main(["reconstruct", str(photos), "--model", "colmap", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unregistered"] == ["zz_stray.png"] and summary["registered"] == 5 and summary["photos"] == 6
    assert summary["names"] == [f"view{i}.png" for i in range(5)]
    assert "not registered (1): zz_stray.png" in captured.out


def test_colmap_takes_photos_of_mixed_sizes(tmp_path, capsys):
    """One photo upscaled, one cropped to another aspect ratio: one camera per photo, all registered, written at
    one common size (the first photo's undistorted size) with cameras that still match the ground truth."""
    from PIL import Image

    from manyview.metrics.pose import pose_metrics
    from manyview.synth import generate

    paths = _synthetic_photos(tmp_path / "photos")
    with Image.open(paths[2]) as im:
        im.resize((288, 288), Image.LANCZOS).save(paths[2])
    with Image.open(paths[4]) as im:
        im.crop((0, 16, 192, 176)).save(paths[4])  # 192 x 160, principal point off-centre
    out = tmp_path / "out"
    code = main(["reconstruct", str(tmp_path / "photos"), "--model", "colmap", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registered"] == 6 and not summary["shared_camera"]
    assert isinstance(summary["camera_params"], dict) and len(summary["camera_params"]) == 6
    _check_pinhole_dataset(out, summary)
    _, truth = generate(3, "object", 6, 192, 192, arc_deg=60.0)
    cams = read_transforms_json(out / "transforms.json").cameras
    assert pose_metrics(cams.to(torch.float64), truth.cameras.to(torch.float64))["RRA@5"] == 100.0


def test_colmap_refuses_a_folder_where_too_few_photos_register(tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (96, 64), (40 * i, 90, 120)).save(photos / f"{i}.png")
    out = tmp_path / "out"
    line = refused(capsys, ["reconstruct", photos, "--model", "colmap", "--out", out],
                   "COLMAP registered 0 of 4 photos", "too little texture", str(photos))
    assert "fewer than the 3" in line
    assert not out.exists() and hidden(tmp_path) == []
    refused(capsys, ["reconstruct", photos / "0.png", photos / "1.png", "--model", "colmap", "--out", out],
            "2 photos given", "at least 3")


@pytest.mark.parametrize("args,mentions", [
    (["--model", "colmap", "--weights", "w"], ["--weights", "colmap"]),
    (["--model", "colmap", "--refine"], ["--refine", "colmap"]),
    (["--model", "colmap", "--size", "64"], ["--size"]),
    (["--refine", "--graph", "swin-2"], ["--graph", "--refine"]),
    (["--refine", "--matcher", "sequential"], ["--matcher", "--refine"]),
    (["--model", "pairwise", "--refine"], ["--refine", "pairwise"]),
    (["--matcher", "sequential"], ["--matcher", "colmap"]),
])
def test_options_of_another_path_are_refused(args, mentions, tmp_path, capsys):
    photos = tmp_path / "photos"
    _synthetic_photos(photos, 3, 32)
    refused(capsys, ["reconstruct", photos, "--out", tmp_path / "out", *args], *mentions)
    assert not (tmp_path / "out").exists()


@needs_family
def test_colmap_on_a_few_real_photos_names_the_unregistered(tmp_path, capsys):
    """Six consecutive family frames at 640 px (about 10 s on 2 cores): at least three register, and every photo
    is either written or named as not registered. (All 29 full-size frames register: bench/README.md.)"""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    names = [f"{i:03d}.jpg" for i in range(10, 16)]
    for name in names:
        with Image.open(FAMILY / name) as im:
            im.resize((640, 360), Image.LANCZOS).save(photos / name, quality=95)
    out = tmp_path / "out"
    code = main(["reconstruct", str(photos), "--model", "colmap", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registered"] >= 3 and summary["photos"] == 6
    assert sorted(summary["names"] + summary["unregistered"]) == names
    assert summary["mean_reprojection_error_px"] < 1.0
    _check_pinhole_dataset(out, summary)
    if summary["unregistered"]:
        assert f"not registered ({len(summary['unregistered'])}): {', '.join(summary['unregistered'])}" in captured.out
