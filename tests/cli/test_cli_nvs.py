"""``manyview nvs``: renders from camera files and orbits, bad input refused with one clear line, and the library
pieces behind it (camera matching, fitting, orbits, pose normalisation)."""

import json

import numpy as np
import pytest
import torch

import manyview.assets
from manyview.cli.main import main
from manyview.errors import ManyviewError
from manyview.geometry.rotation import random_rotation
from manyview.geometry.transforms import rigid
from manyview.io.dataset import read_cameras, write_dataset
from manyview.models.lvsm_config import CONFIGS
from manyview.models.lvsm_family import build_model
from manyview.nvs import pipeline
from manyview.scene import Cameras, Views, resize_cameras
from manyview.synth import generate


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("lvsm-tiny", "efficient-lvsm-tiny"):
        torch.manual_seed(0)
        out[name] = build_model(CONFIGS[name]).save_pretrained(root / name)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "ds"
    _, views = generate(5, "object", 3, 48, 64, arc_deg=60.0)
    write_dataset(root, views)
    return root


def run(*args) -> int:
    return main(["nvs", *map(str, args)])


@pytest.mark.slow
def test_orbit_renders_pngs_and_cameras(dataset, weights, tmp_path, capsys):
    out = tmp_path / "orbit"
    assert run("--inputs", dataset / "images", "--cameras", dataset, "--orbit", 4, "--out", out,
               "--weights", weights["efficient-lvsm-tiny"], "--device", "cpu") == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"orbit_{i:04d}.png" for i in range(4)]
    cams, names = read_cameras(out)
    assert len(cams) == 4 and cams.image_size.tolist() == [[32, 32]] * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_views"] == 3 and summary["rendered_views"] == 4 and summary["size"] == 32
    assert "rendered 4 views" in capsys.readouterr().out
    # video.mp4 exactly when the optional 'video' extra (imageio-ffmpeg) is installed
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        import imageio.v3 as iio

        assert summary["video"] == "video.mp4" and iio.imread(out / "video.mp4").shape == (4, 32, 32, 3)
    else:
        assert summary["video"] is None and not (out / "video.mp4").exists()
    # the written renders are the library's renders (PNG-quantised)
    from manyview.io.images import read_image

    model, _ = pipeline.load_nvs_model(weights["efficient-lvsm-tiny"])
    views, _ = pipeline.load_posed_inputs(sorted((dataset / "images").iterdir()), dataset, 32)
    ref = pipeline.render_views(model, views, views.cameras.orbit(4))
    got = torch.stack([read_image(p)[0] for p in pngs])
    assert (got - ref).abs().max() <= 1 / 255 + 1e-6
    # a second run may replace its own earlier output
    assert run("--inputs", dataset / "images", "--cameras", dataset, "--orbit", 2, "--out", out,
               "--weights", weights["efficient-lvsm-tiny"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 2


def test_targets_from_a_camera_file_including_the_inputs_own(dataset, weights, tmp_path):
    out = tmp_path / "targets"
    files = sorted((dataset / "images").glob("*.png"))
    assert run("--inputs", files[0], files[2], "--cameras", dataset / "transforms.json", "--targets", dataset,
               "--out", out, "--weights", weights["lvsm-tiny"], "--model", "lvsm") == 0
    assert len(list((out / "images").glob("*.png"))) == 3  # every camera of the dataset, inputs included


def test_refused_inputs_exit_2_with_one_line(dataset, weights, tmp_path, capsys, monkeypatch):
    w = weights["efficient-lvsm-tiny"]
    imgs = dataset / "images"

    def refused(*args, match):
        assert run(*args) == 2
        err = capsys.readouterr().err
        assert err.startswith("manyview: error:") and err.count("\n") == 1 and match in err, err

    # a checkpoint of the other family
    refused("--inputs", imgs, "--cameras", dataset, "--orbit", 2, "--out", tmp_path / "a", "--weights", w,
            "--model", "lvsm", match="Efficient-LVSM checkpoint but --model lvsm")
    # exactly one of --targets / --orbit
    refused("--inputs", imgs, "--cameras", dataset, "--out", tmp_path / "a", "--weights", w, match="exactly one")
    # zero inputs
    (tmp_path / "empty").mkdir()
    refused("--inputs", tmp_path / "empty", "--cameras", dataset, "--orbit", 2, "--out", tmp_path / "a",
            "--weights", w, match="no images")
    # more images than cameras, names that match none
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(4):
        (extra / f"photo{i}.png").write_bytes((imgs / "00000.png").read_bytes())
    refused("--inputs", extra, "--cameras", dataset, "--orbit", 2, "--out", tmp_path / "a", "--weights", w,
            match="3 cameras for 4 images")
    # an image with no camera among named ones
    (extra / "00000.png").write_bytes((imgs / "00000.png").read_bytes())
    refused("--inputs", extra / "00000.png", extra / "photo1.png", "--cameras", dataset, "--orbit", 2, "--out",
            tmp_path / "a", "--weights", w, match="no camera for image 'photo1.png'")
    # cameras for images of another size (aspect ratio)
    meta = json.loads((dataset / "transforms.json").read_text())
    bad = tmp_path / "bad_size"
    bad.mkdir()
    meta_size = {**meta, "frames": [{**f, "w": 48, "h": 48} for f in meta["frames"]]}
    for f in meta_size["frames"]:
        f["file_path"] = str(dataset / f["file_path"])
    (bad / "transforms.json").write_text(json.dumps(meta_size))
    refused("--inputs", imgs, "--cameras", bad / "transforms.json", "--orbit", 2, "--out", tmp_path / "a",
            "--weights", w, match="aspect ratios differ")
    # non-finite poses, named by file
    meta_nan = json.loads(json.dumps(meta_size).replace('"w": 48, "h": 48', '"w": 64, "h": 48'))
    meta_nan["frames"][1]["transform_matrix"][0][3] = float("nan")
    (bad / "nan.json").write_text(json.dumps(meta_nan))
    refused("--inputs", imgs, "--cameras", bad / "nan.json", "--orbit", 2, "--out", tmp_path / "a", "--weights", w,
            match="nan.json")
    # no weights and nothing bundled: the message says what to pass
    monkeypatch.setattr(manyview.assets, "bundled_model_dir", lambda model: None)  # an installation without them
    refused("--inputs", imgs, "--cameras", dataset, "--orbit", 2, "--out", tmp_path / "a", match="--weights")
    # an output folder that is not ours
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep")
    refused("--inputs", imgs, "--cameras", dataset, "--orbit", 2, "--out", tmp_path / "theirs", "--weights", w,
            match="refusing to replace")
    assert not (tmp_path / "a").exists()


def test_train_and_eval_subcommands_are_registered(capsys):
    for argv in (["train", "lvsm", "tiny", "--help"], ["train", "efficient-lvsm", "bundled", "--help"],
                 ["eval", "nvs", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--re10k" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- library pieces
def test_match_cameras_by_name_or_order():
    cams = Cameras(torch.rand(3, 4) + 1, torch.eye(4).repeat(3, 1, 1), (10, 10))
    cams = cams.with_poses(rigid(torch.eye(3).repeat(3, 1, 1), torch.arange(3.0)[:, None].repeat(1, 3)))
    got, by_name = pipeline.match_cameras(["c.jpg", "a.png"], cams, ["images/a.jpg", "b.jpg", "sub/c.jpg"], "src")
    assert by_name and torch.equal(got.c2w, cams.c2w[[2, 0]])
    got, by_name = pipeline.match_cameras(["x.png", "y.png", "z.png"], cams, ["a", "b", "c"], "src")
    assert not by_name and torch.equal(got.c2w, cams.c2w)
    with pytest.raises(ManyviewError, match="share the image name"):
        pipeline.match_cameras(["a.png"], cams, ["a.jpg", "b.jpg", "x/a.png"], "src")


def test_resized_cameras_agree_with_loaded_crops(dataset):
    views, by_name = pipeline.load_posed_inputs(sorted((dataset / "images").iterdir()), dataset, 32)
    cams, _ = read_cameras(dataset)
    assert by_name
    fitted = resize_cameras(cams, 32, 32)
    torch.testing.assert_close(fitted.fxfycxcy.float(), views.cameras.fxfycxcy, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fitted.c2w.float(), views.cameras.c2w, atol=1e-5, rtol=1e-5)
    assert fitted.image_size.tolist() == [[32, 32]] * 3


def looking_at(point: torch.Tensor, eyes: torch.Tensor) -> Cameras:
    f = torch.tensor([30.0, 30, 16, 16], dtype=torch.float64)
    return Cameras.look_at(eyes, point.expand_as(eyes), torch.tensor([0.0, 0, 1], dtype=torch.float64),
                           f.expand(len(eyes), 4), (32, 32))


def test_renders_do_not_depend_on_the_world_frame(weights):
    """Normalisation from the inputs makes rendering invariant to any rotation, translation and scale of the world."""
    model, _ = pipeline.load_nvs_model(weights["efficient-lvsm-tiny"])
    g = torch.Generator().manual_seed(0)
    center = torch.zeros(3, dtype=torch.float64)
    eyes = torch.tensor([[3.0, 0.0, 1.0], [2.0, 2.0, 1.2], [0.0, 3.0, 1.0]], dtype=torch.float64)
    cams = looking_at(center, eyes)
    views = Views(images=torch.rand(3, 3, 32, 32, generator=g), cameras=cams.to(torch.float32))
    targets = cams.orbit(3).to(torch.float32)
    ref = pipeline.render_views(model, views, targets)
    T = rigid(random_rotation(1, generator=g)[0], torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64))
    moved = Views(images=views.images, cameras=cams.transform(T, 7.5).to(torch.float32))
    out = pipeline.render_views(model, moved, targets.to(torch.float64).transform(T, 7.5).to(torch.float32))
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)
    bad = Views(images=views.images, cameras=cams.with_poses(cams.c2w.clone().index_put_(
        (torch.tensor([0]), torch.tensor([0]), torch.tensor([3])), torch.tensor([np.nan], dtype=torch.float64))))
    with pytest.raises(ManyviewError, match="NaN"):
        pipeline.render_views(model, bad, targets)


# --------------------------------------------------------------------------------------------- the shipped models
@pytest.mark.parametrize("variant", ["efficient-lvsm", "lvsm"])
def test_the_shipped_bundled_model_renders_and_beats_the_naive_baselines(variant, dataset, tmp_path):
    """The weights in the package load, fit the 25 MB budget, are `nvs`'s default, and render held-out scenes better
    than copying the nearest input or averaging the inputs (a model with broken weights or ray conventions does not)."""
    from manyview.nvs import evaluate as ev
    from manyview.train.lvsm_task import preset

    folder = manyview.assets.bundled_model_dir(variant)
    assert folder is not None, f"no bundled {variant} model in the package"
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    assert (folder / "training_log.csv").is_file() and (folder / "RECIPE.md").is_file()
    out = tmp_path / "orbit"
    assert run("--inputs", dataset / "images", "--cameras", dataset, "--orbit", 2, "--out", out, "--model", variant,
               "--device", "cpu") == 0
    assert json.loads((out / "summary.json").read_text())["weights"] == f"bundled:{folder.name}"
    model, _ = pipeline.load_nvs_model(None, variant)
    result = ev.evaluate(model, ev.synthetic_examples(preset(variant).task.data, num_scenes=4), "held-out")
    for scene in result.scenes:
        assert scene["model"]["psnr"] > max(scene["nearest-input"]["psnr"], scene["mean-input"]["psnr"]), scene
