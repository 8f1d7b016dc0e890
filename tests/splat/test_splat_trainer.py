"""Splat training: it learns (held-out PSNR rises), resumes exactly, guards against NaN, refuses bad input."""

import json
import math
import warnings

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.scene import PointCloud, Views
from manyview.splat import DensifyStrategy, read_ply
from manyview.splat.trainer import (
    SplatTrainConfig,
    SplatTrainer,
    scene_extent,
    split_views,
)
from manyview.synth import generate


@pytest.fixture(scope="module")
def scene():
    _, views = generate(0, kind="object", num_views=8, height=40, width=40)
    return Views(images=views.images, cameras=views.cameras, names=views.names), views.point_cloud(max_points=None)


def test_split_and_schedule(scene):
    assert split_views(10) == ([1, 2, 3, 4, 5, 6, 7, 9], [0, 8])
    assert split_views(1) == ([0], [])
    assert split_views(5, 0) == ([0, 1, 2, 3, 4], [])
    views, _ = scene
    extent = scene_extent(views)
    centers = views.cameras.centers.double()
    assert extent == pytest.approx(1.1 * (centers - centers.mean(0)).norm(dim=-1).max().item())
    cfg = SplatTrainConfig(iterations=1000)
    assert cfg.lr_means_at(0, extent) == pytest.approx(1.6e-4 * extent)
    assert cfg.lr_means_at(1000, extent) == pytest.approx(1.6e-6 * extent)
    assert cfg.lr_means_at(500, extent) == pytest.approx(math.sqrt(1.6e-4 * 1.6e-6) * extent)  # log-linear


@pytest.mark.slow
def test_training_raises_held_out_psnr_and_writes_outputs(scene, tmp_path):
    views, points = scene
    k = 4.0  # a short run: larger steps than 3DGS's 30k-iteration rates
    cfg = SplatTrainConfig(iterations=60, sh_degree=0, max_init_points=800, eval_every=30, checkpoint_every=0,
                           lr_means=1.6e-4 * k, lr_sh_dc=2.5e-3 * k, lr_opacity=0.025 * k, lr_scaling=5e-3 * k,
                           densify=DensifyStrategy(refine_start_iter=20, refine_every=20, refine_stop_iter=50))
    trainer = SplatTrainer(views, tmp_path, cfg, points=points)
    assert trainer.test_ids == [0] and len(trainer.params["means"]) == 800
    before = trainer.evaluate(with_lpips=False)["psnr"]
    train_before = trainer.evaluate(trainer.train_ids, with_lpips=False)["psnr"]
    result = trainer.train(show_progress=False)
    assert result["psnr"] > before + 2.0, (before, result["psnr"])
    assert trainer.evaluate(trainer.train_ids, with_lpips=False)["psnr"] > train_before + 2.0
    assert [h["step"] for h in result["history"]] == [30, 60]
    assert result["skipped_steps"] == []
    assert len(trainer.params["means"]) != 800  # densification changed the set

    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["psnr"] == pytest.approx(result["psnr"]) and saved["step"] == 60
    assert [v["index"] for v in saved["views"]] == [0]
    back = read_ply(tmp_path / "splat.ply")
    assert len(back) == result["gaussians"]
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc"):
        torch.testing.assert_close(getattr(back, name), getattr(trainer.gaussians, name))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary leftovers


def _small_config(**kw):
    return SplatTrainConfig(iterations=16, sh_degree=1, sh_increase_every=5, max_init_points=300, checkpoint_every=0,
                            random_background=True, seed=3,
                            densify=DensifyStrategy(refine_start_iter=3, refine_every=4, reset_every=10,
                                                    grow_grad2d=1e-5), **kw)


@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run(scene, tmp_path):
    views, points = scene
    small = Views(images=views.images[:, :, :32, :32], cameras=views.cameras.cropped(0, 0, 32, 32), names=views.names)
    full = SplatTrainer(small, tmp_path / "a", _small_config(), points=points)
    losses = [full.train_step()["loss"] for _ in range(16)]
    assert len(full.params["means"]) != 300  # densification ran (its state must survive the checkpoint)

    first = SplatTrainer(small, tmp_path / "b", _small_config(), points=points)
    first.train(show_progress=False, stop_at=6)
    assert [p.name for p in first.checkpoint_dirs()] == ["step_000006"]
    assert not (tmp_path / "b" / "splat.ply").exists()  # an interrupted run leaves no PLY
    resumed = SplatTrainer(small, tmp_path / "b", _small_config(), points=points)
    assert resumed.load_checkpoint() == 6
    later = [resumed.train_step()["loss"] for _ in range(10)]
    assert later == losses[6:]
    assert len(resumed.params["means"]) == len(full.params["means"])
    for name in full.params:
        assert torch.equal(resumed.params[name], full.params[name]), name


def _assert_first_step_skipped(trainer, warning: str) -> None:
    """One train_step is skipped with a warning naming ``warning`` and leaves every parameter as it was."""
    before = {n: p.detach().clone() for n, p in trainer.params.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = trainer.train_step()
    assert info["skipped"] and trainer.skipped == [1]
    assert any(warning in str(w.message) for w in caught)
    for name, value in before.items():
        assert torch.equal(trainer.params[name], value)


def test_non_finite_loss_skips_the_step(scene, tmp_path):
    views, points = scene
    images = views.images.clone()
    images[:, :, 5, 5] = float("nan")
    bad = Views(images=images, cameras=views.cameras, names=views.names)
    _assert_first_step_skipped(SplatTrainer(bad, tmp_path, _small_config(), points=points), "non-finite loss")


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_one_non_finite_gradient_element_skips_the_step(scene, tmp_path, bad):
    views, points = scene
    trainer = SplatTrainer(views, tmp_path, _small_config(), points=points)

    def poison(grad):  # one element of one parameter's gradient
        grad = grad.clone()
        grad.view(-1)[7] = bad
        return grad

    trainer.params["log_scales"].register_hook(poison)
    _assert_first_step_skipped(trainer, "non-finite gradients")


def test_bad_input_is_refused(scene, tmp_path):
    views, points = scene
    wrong = Views(images=views.images, names=views.names)
    object.__setattr__(wrong, "cameras", views.cameras.resized(20, 20))  # what Views itself would refuse
    with pytest.raises(ManyviewError, match="40x40 but its camera is 20x20"):
        SplatTrainer(wrong, tmp_path, _small_config(), points=points)
    xyz = points.xyz[:100].clone()
    xyz[3, 1] = float("nan")
    with pytest.raises(ManyviewError, match="NaN"):
        SplatTrainer(views, tmp_path, _small_config(), points=PointCloud(xyz))
    with pytest.raises(ManyviewError, match="no camera poses"):
        SplatTrainer(Views(images=views.images), tmp_path, _small_config())
    with pytest.raises(ManyviewError, match="no checkpoint"):
        SplatTrainer(views, tmp_path, _small_config(), points=points).load_checkpoint()


def test_random_init_fills_the_camera_box(scene, tmp_path):
    views, _ = scene
    trainer = SplatTrainer(views, tmp_path, _small_config(random_init_points=64))
    means = trainer.params["means"].detach()
    centers = views.cameras.centers
    assert len(means) == 64
    assert (means >= centers.amin(0) - 1e-5).all() and (means <= centers.amax(0) + 1e-5).all()
