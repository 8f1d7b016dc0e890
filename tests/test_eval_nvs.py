"""Novel-view evaluation: the pixelSplat protocol's metrics and averaging, the RealEstate10K index reader, held-out
synthetic scenes, the naive baselines, and ``manyview eval nvs`` end to end."""

import json
import math

import pytest
import torch
from torch import nn

from manyview.cli.main import main
from manyview.errors import ManyviewError
from manyview.geometry.poses import normalize_poses
from manyview.io.realestate10k import scene_from_views, write_chunks
from manyview.metrics.image import ssim
from manyview.models.lvsm_config import CONFIGS, LVSMConfig
from manyview.models.lvsm_family import build_model
from manyview.nvs import evaluate as ev
from manyview.scene import Cameras, Views
from manyview.synth import generate
from manyview.synth.samples import EVAL_SEED_START
from manyview.train.lvsm_task import LVSMDataConfig


def test_ssim_sample_covariance_matches_skimage_default():
    skimage = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 48, generator=g, dtype=torch.float64)
    b = (a + 0.15 * torch.randn(3, 40, 48, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = skimage.structural_similarity(a.numpy(), b.numpy(), win_size=11, gaussian_weights=True, channel_axis=0,
                                        data_range=1.0)  # as pixelSplat / LVSM call it
    assert abs(ssim(b, a, sample_covariance=True).item() - ref) < 1e-9
    assert abs(ssim(b, a).item() - ref) > 1e-7  # the default (Wang et al.) variant differs


def cams_at(centers) -> Cameras:
    centers = torch.as_tensor(centers, dtype=torch.float32)
    n = len(centers)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = centers
    return Cameras(torch.tensor([20.0, 20, 8, 8]).expand(n, 4), c2w, (16, 16))


def test_baselines():
    images = torch.stack([torch.full((3, 16, 16), v) for v in (0.1, 0.5, 0.9)])
    inputs = Views(images=images, cameras=cams_at([[0, 0, 0], [1, 0, 0], [5, 0, 0]]))
    targets = cams_at([[0.9, 0.2, 0], [4.0, 0, 0], [-1, 0, 0]])
    near = ev.nearest_input(inputs, targets)
    assert near[:, 0, 0, 0].tolist() == pytest.approx([0.5, 0.9, 0.1])
    mean = ev.mean_input(inputs, 2)
    assert mean.shape == (2, 3, 16, 16) and torch.allclose(mean, torch.full_like(mean, 0.5))


class ConstantModel(nn.Module):
    """Renders every target as one grey level; records the cameras it was given."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.config = LVSMConfig("efficient", d=16, d_head=8, n_layer=1, image_size=16)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []

    def render(self, images, input_cameras, target_cameras, target_batch_size=None):
        self.seen.append((input_cameras, target_cameras))
        b, v = target_cameras.shape
        return torch.full((b, v, 3, 16, 16), self.value)


def example(key, target_values, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = Views(images=torch.rand(2, 3, 16, 16, generator=g), cameras=cams_at([[0, 0, 0], [1, 0, 0]]))
    n = len(target_values)
    targets = Views(images=torch.stack([torch.full((3, 16, 16), v) for v in target_values]),
                    cameras=cams_at([[0.2 * (i + 1), 0, 0.1] for i in range(n)]))
    return ev.NVSExample(key, inputs, targets)


def test_scores_average_over_targets_then_scenes():
    model = ConstantModel(0.5)
    examples = [example("one", [0.6]), example("three", [0.5 + 1e-3, 0.7, 0.9])]
    result = ev.evaluate(model, examples, "toy")
    psnr = lambda v: -10 * math.log10((v - 0.5) ** 2)  # noqa: E731
    per_scene = [psnr(0.6), (psnr(0.501) + psnr(0.7) + psnr(0.9)) / 3]
    summary = result.summary()
    assert summary["model"]["psnr"] == pytest.approx(sum(per_scene) / 2, rel=1e-5)
    assert result.scenes[1]["targets"] == 3 and result.scenes[0]["model"]["psnr"] == pytest.approx(per_scene[0])
    assert set(summary) == {"model", "nearest-input", "mean-input"}
    assert summary["model"]["lpips"] is None and "n/a" in result.markdown()
    # the model saw cameras normalised over inputs and targets together (the released evaluation loaders)
    cin, ctgt = model.seen[1]
    both = normalize_poses(torch.cat([examples[1].inputs.cameras.c2w, examples[1].targets.cameras.c2w]).double(),
                           1.35).float()
    torch.testing.assert_close(torch.cat([cin.c2w[0], ctgt.c2w[0]]), both)
    table = result.markdown().splitlines()
    assert table[2] == "| method | PSNR (dB) | SSIM | LPIPS |" and len(table) == 7
    # the baselines alone
    assert ev.evaluate(None, examples, "toy").methods == ["nearest-input", "mean-input"]
    with pytest.raises(ManyviewError, match="no scenes"):
        ev.evaluate(model, [], "toy")


@pytest.fixture(scope="module")
def re10k(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k")
    scenes = [scene_from_views(f"scene{i}", generate(300 + i, "room", 8, 36, 64)[1]) for i in range(3)]
    write_chunks(root / "test", scenes, scenes_per_chunk=2)
    index = {"scene2": {"context": [0, 6], "target": [2, 3, 4]}, "gone": {"context": [0, 1], "target": [0]},
             "scene1": None, "scene0": {"context": [1, 7], "target": [4]}}
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_re10k_examples_follow_the_index(re10k):
    info = {}
    examples = list(ev.re10k_examples(re10k / "test", re10k / "index.json", size=32, info=info))
    assert [e.key for e in examples] == ["scene2", "scene0"]  # index order, null and missing scenes skipped
    assert info == {"index_scenes": 4, "null_entries": 1, "missing_scenes": 1}
    e = examples[0]
    assert e.inputs.images.shape == (2, 3, 32, 32) and e.targets.images.shape == (3, 3, 32, 32)
    assert e.inputs.names == ["scene2/00000", "scene2/00006"]
    assert e.targets.cameras.image_size.tolist() == [[32, 32]] * 3
    assert abs(e.targets.cameras.cx[0].item() - 16) < 0.6  # centre crop of the 36 x 64 frames scaled to 32 x 57
    assert len(list(ev.re10k_examples(re10k / "test", re10k / "index.json", size=32, limit=1))) == 1
    bad = re10k / "bad_index.json"
    bad.write_text(json.dumps({"scene0": {"context": [0, 99], "target": [1]}}))
    with pytest.raises(ManyviewError, match="out of range"):
        list(ev.re10k_examples(re10k / "test", bad, size=32))
    (re10k / "none.json").write_text(json.dumps({"other": {"context": [0, 1], "target": [0]}}))
    with pytest.raises(ManyviewError, match="none of the 1 scenes"):
        list(ev.re10k_examples(re10k / "test", re10k / "none.json", size=32))


def test_synthetic_examples_are_held_out_and_deterministic():
    data = LVSMDataConfig(image_size=32, frames=8, min_frame_dist=2, max_frame_dist=6, supersample=1)
    a = list(ev.synthetic_examples(data, 2, num_targets=3))
    b = list(ev.synthetic_examples(data, 2, num_targets=3))
    assert [e.key for e in a] == [f"synth-{EVAL_SEED_START}", f"synth-{EVAL_SEED_START + 1}"]
    assert torch.equal(a[1].targets.images, b[1].targets.images)
    frames = [int(n.split("/")[1]) for n in a[0].inputs.names + a[0].targets.names]
    assert frames[1] - frames[0] == 4 and all(frames[0] < f < frames[1] for f in frames[2:])
    with pytest.raises(ManyviewError, match="inside the training seeds"):
        list(ev.synthetic_examples(data, 1, seed_base=5))


@pytest.mark.slow
def test_eval_nvs_command(re10k, tmp_path, capsys):
    torch.manual_seed(0)
    weights = build_model(CONFIGS["efficient-lvsm-tiny"]).save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    assert main(["eval", "nvs", "--weights", str(weights), "--re10k", str(re10k / "test"), "--index",
                 str(re10k / "index.json"), "--size", "32", "--synthetic", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| nearest-input |" in text and "| mean-input |" in text and "| model |" in text
    report = json.loads(out.read_text())
    assert report["re10k"]["num_scenes"] == 2 and report["synthetic"]["num_scenes"] == 1
    assert report["re10k"]["info"]["missing_scenes"] == 1
    assert set(report["re10k"]["summary"]) == {"model", "nearest-input", "mean-input"}
    assert main(["eval", "nvs", "--weights", str(weights), "--re10k", str(re10k / "test"), "--synthetic", "0",
                 "--out", str(out)]) == 2
    assert "--index" in capsys.readouterr().err
