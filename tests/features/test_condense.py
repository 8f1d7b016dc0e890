"""ConDense: the model's outputs and save / load round trip, the losses, the synthetic samples, and a few training
steps on the shared trainer lowering the loss."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.features.condense import ConDense, ConDenseConfig
from manyview.features.efficientnet import EfficientNetLite0
from manyview.features.student3d import PointBackboneConfig
from manyview.features.teachers import EfficientNetTeacher
from manyview.geometry.projection import project
from manyview.geometry.transforms import invert_rigid
from manyview.train import OptimConfig, TrainConfig, train
from manyview.train.condense_task import CondenseTask, condense_losses, preset

TINY = ConDenseConfig(dim=8, head_hidden=16, point=PointBackboneConfig(width=16, depth=1, heads=2, k=4))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return EfficientNetTeacher(EfficientNetLite0().eval()).requires_grad_(False)


@pytest.fixture(scope="module")
def task(teacher):
    run = preset("tiny")
    cfg = dataclasses.replace(run.task, model=TINY, data=dataclasses.replace(
        run.task.data, num_scenes=2, frames=4, num_views=2, num_points=256, image_size=64))
    return CondenseTask(cfg, teacher=teacher)


def test_samples_are_surface_points_the_views_see(task):
    s = task.sample(0, torch.Generator().manual_seed(0))
    assert s["images"].shape == (2, 3, 64, 64) and s["points"].shape == (256, 3) and s["colors"].shape == (256, 3)
    # every point projects, in front of some view, onto a pixel of that colour
    uv, z = project(s["points"][None].expand(2, -1, -1), s["fxfycxcy"], invert_rigid(s["c2w"]))
    col, row = uv[..., 0].floor().long().clamp(0, 63), uv[..., 1].floor().long().clamp(0, 63)
    seen = torch.stack([(s["images"][v, :, row[v], col[v]].T - s["colors"]).abs().amax(-1) < 1e-6 for v in
                        range(2)]) & (z > 0)
    assert seen.any(dim=0).all()
    again = task.sample(0, torch.Generator().manual_seed(0))
    assert all(torch.equal(s[k], again[k]) for k in s), "a sample depends only on its generator"


def test_model_outputs_and_a_save_load_round_trip(task, tmp_path):
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = {k: v[None] for k, v in task.sample(1, torch.Generator().manual_seed(1)).items()}
    with torch.no_grad():
        out = model(batch["images"], batch["points"], batch["colors"], batch["fxfycxcy"], batch["c2w"])
    assert out.features2d.shape == (1, 2, 8, 8, 8) and out.rendered.shape == (1, 2, 8, 8, 8)
    assert out.anchor.shape == (1, 2, 152, 8, 8) and out.features3d.shape == (1, 256, 8)
    assert out.alpha.shape == (1, 2, 8, 8) and 0 < float(out.alpha.mean()) <= 1
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dim"] == 8
    loaded = ConDense.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        again = loaded(batch["images"], batch["points"], batch["colors"], batch["fxfycxcy"], batch["c2w"])
    for a, b in zip(out, again):
        torch.testing.assert_close(a, b)
    # a checkpoint whose feature dimension differs from the one asked for is refused, naming what differs
    with pytest.raises(ManyviewError, match="shape mismatch"):
        ConDense.from_pretrained(tmp_path / "m", config=dataclasses.replace(TINY, dim=16))


def test_losses_measure_what_they_are_named_after():
    g = torch.Generator().manual_seed(0)
    f2d = torch.randn(2, 4, 3, 3, generator=g)
    alpha = torch.full((2, 3, 3), 0.8)
    alpha[0, 0, 0] = 0.1  # below min_alpha: not counted, whatever its feature
    rendered = f2d * alpha[:, None] * 3.0  # the same direction, any scale
    rendered[0, :, 0, 0] = -rendered[0, :, 0, 0]
    teacher = torch.randn(2, 6, 3, 3, generator=g)
    cons, anchor, coverage = condense_losses(rendered, alpha, f2d, teacher * 2, teacher, 0.5)
    assert float(cons) == pytest.approx(0, abs=1e-6) and float(anchor) == pytest.approx(0, abs=1e-6)
    assert float(coverage) == pytest.approx(17 / 18)
    cons, anchor, _ = condense_losses(-rendered, alpha, f2d, -teacher, teacher, 0.5)
    assert float(cons) == pytest.approx(2, abs=1e-5) and float(anchor) == pytest.approx(2, abs=1e-5)


def test_config_errors_are_one_line():
    with pytest.raises(ManyviewError, match="unknown teacher"):
        ConDenseConfig(teacher="vgg")
    with pytest.raises(ManyviewError, match="unknown ConDense config keys: colour"):
        ConDenseConfig.from_dict({"dim": 8, "colour": 1})
    with pytest.raises(ManyviewError, match="preset"):
        preset("huge")


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss_and_export_a_loadable_model(task, tmp_path):
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=8, batch_size=2, optim=OptimConfig(lr=2e-3), log_every=1,
                      ckpt_every=8, keep_last=1, progress=False, device="cpu", seed=3)
    result = train(cfg, task)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert result.history[-1]["consistency"] < result.history[0]["consistency"]
    assert result.history[-1]["anchor"] < result.history[0]["anchor"]
    model = ConDense.from_pretrained(tmp_path / "run" / "final")
    assert model.config == task.cfg.model
