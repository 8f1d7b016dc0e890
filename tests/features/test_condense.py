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
from manyview.train.condense_task import CondenseTask, common_offset, condense_losses, cosine_distance, preset

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
    rendered = f2d * alpha[:, None]  # renders, divided by the opacity, to the 2D features
    rendered[0, :, 0, 0] = -rendered[0, :, 0, 0]  # not counted
    teacher = torch.randn(2, 6, 3, 3, generator=g)
    cons, anchor, offset, coverage = condense_losses(rendered, alpha, f2d, teacher * 2, teacher, 0.5)
    assert float(cons) == pytest.approx(0, abs=1e-6) and float(anchor) == pytest.approx(0, abs=1e-6)
    assert float(coverage) == pytest.approx(17 / 18)
    counted = (alpha >= 0.5)[:, None].float()
    mean = (f2d * counted).sum(dim=(0, 2, 3), keepdim=True) / counted.sum()
    mirrored = (2 * mean - f2d) * alpha[:, None]  # the 2D features' variation reversed about their mean
    cons, anchor, _, _ = condense_losses(mirrored, alpha, f2d, -teacher, teacher, 0.5)
    assert float(cons) == pytest.approx(2, abs=1e-5) and float(anchor) == pytest.approx(2, abs=1e-5)


def test_a_constant_feature_field_earns_nothing_from_the_anchor_and_pays_the_offset_term():
    """The collapse the tiny preset showed: a near-constant 2D feature matched non-negative teacher features at
    cos ~0.4 and made the consistency term trivially 0."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(4, 6, 5, 5, generator=g)  # non-negative, like ReLU stages
    constant = torch.ones(4, 6, 5, 5) + 1e-3 * torch.randn(4, 6, 5, 5, generator=g)
    assert float(cosine_distance(constant, teacher).mean()) < 0.3  # what the uncentred anchor gave a constant
    alpha = torch.ones(4, 5, 5)
    terms = condense_losses(constant * alpha[:, None], alpha, constant, constant, teacher, 0.5)
    assert float(terms.consistency) < 1e-6, "consistency alone cannot tell a constant field"
    assert float(terms.anchor) > 0.8 and float(terms.offset) > 10
    centred = torch.randn(4, 6, 5, 5, generator=g)
    centred = centred - centred.mean(dim=(0, 2, 3), keepdim=True)
    assert float(common_offset(centred)) == pytest.approx(0, abs=1e-5)
    assert float(common_offset(centred + 1.0)) > float(common_offset(centred + 0.1)) > 0


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
    # not collapsed: the 2D features' directions spread over cells (1 - |mean unit vector|^2) grows from the
    # fresh head's near-constant field (before the offset term and the centred anchor, it fell further)
    batch = task.sample(100, torch.Generator().manual_seed(100))
    spread = []
    for m in (task.build_model(), model):
        with torch.no_grad():
            out = m.eval()(*(batch[k][None] for k in ("images", "points", "colors", "fxfycxcy", "c2w")))
        for f in (out.features2d[0], out.features3d[0].T[None, :, :, None]):
            f = torch.nn.functional.normalize(f, dim=1)
            spread.append(1 - float(f.mean(dim=(0, 2, 3)).square().sum()))
    print("spread 2D / 3D before, after", spread)
    assert spread[2] > max(10 * spread[0], 0.005), spread
    assert spread[3] > 0.01, spread
