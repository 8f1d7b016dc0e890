"""Per-view parameters of splat training: exposure compensation recovers known per-photo colour gains, pose
refinement recovers known camera perturbations, both survive a checkpoint, and the evaluation's fitted exposure
is the least-squares one."""

import json
import math
from dataclasses import replace

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.scene import Views
from manyview.splat import DensifyStrategy, render
from manyview.splat.appearance import (apply_colour_transform, apply_colour_transform_reference, exposure_fitted,
                                       fit_affine_colour)
from manyview.splat.pose_refine import move_world, refined_c2w
from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

from splat_scenes import make_cameras, make_scene

NO_DENSIFY = DensifyStrategy(refine_start_iter=10**6, refine_stop_iter=10**6 + 1, reset_every=10**6)


def _ring_cameras(n: int, size: int = 40):
    """``n`` cameras on a ring round the origin, looking at it."""
    from manyview.scene import Cameras

    angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n) * 0.35
    eyes = torch.stack([4 * torch.sin(angles), 0.3 * torch.cos(3 * angles), -4 * torch.cos(angles)], -1)
    f = 0.9 * size
    intr = torch.tensor([f, f, size / 2, size / 2], dtype=torch.float64)
    return Cameras.look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64),
                           intr, (size, size)).to(torch.float32)


def _frozen_gaussians_config(**kw) -> SplatTrainConfig:
    """Only the per-view parameters learn: the Gaussians are the ground truth and keep still."""
    zero = dict(lr_means=1e-30, lr_means_final=1e-30, lr_sh_dc=0.0, lr_sh_rest=0.0, lr_opacity=0.0, lr_scaling=0.0,
                lr_rotation=0.0)
    return SplatTrainConfig(sh_degree=0, sh_increase_every=0, checkpoint_every=0, test_every=4, lambda_dssim=0.0,
                            densify=NO_DENSIFY, **zero, **kw)


@pytest.fixture(scope="module")
def truth():
    """Gaussians in many saturated colours (so that a colour transform is determined by the pixels), the ring
    cameras, and the images they render."""
    from manyview.splat.sh import rgb_to_sh

    g = make_scene(60, seed=4, degree=0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    colours = torch.rand(len(g), 3, generator=gen).round() * 0.8 + 0.1  # the eight corners of the colour cube
    g = replace(g, sh_dc=rgb_to_sh(colours)[:, None, :])
    cams = _ring_cameras(5)  # test_every 4: views 1, 2, 3 train, 0 and 4 are held out
    images = torch.cat([render(g, cams[i:i + 1]).rgb for i in range(len(cams))]).clamp(0, 1)
    return g, cams, images


def test_colour_transform_matches_its_per_pixel_reference():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 5, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(apply_colour_transform(rgb, t), apply_colour_transform_reference(rgb, t))


def test_fitted_exposure_is_the_least_squares_transform():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(3, 12, 10, generator=gen, dtype=torch.float64) * 0.8
    t = torch.tensor([[0.9, 0.05, 0.0, 0.02], [0.0, 1.1, 0.03, -0.01], [0.02, 0.0, 0.8, 0.05]], dtype=torch.float64)
    target = apply_colour_transform(pred, t)
    torch.testing.assert_close(fit_affine_colour(pred, target), t)
    noisy = target + 0.02 * torch.randn(target.shape, generator=gen, dtype=torch.float64)
    fitted = fit_affine_colour(pred, noisy)
    error = lambda m: (apply_colour_transform(pred, m) - noisy).square().sum()  # noqa: E731
    assert error(fitted) <= error(t)  # the least-squares transform beats even the true one on noisy pixels
    for k in range(12):  # and is a minimum: any small change of one entry raises the error
        for step in (-1e-3, 1e-3):
            bumped = fitted.clone().reshape(-1)
            bumped[k] += step
            assert error(bumped.reshape(3, 4)) > error(fitted)
    clamped = exposure_fitted(pred[None], noisy[None])[0]
    torch.testing.assert_close(clamped, apply_colour_transform(pred, fitted).clamp(0, 1))


@pytest.mark.slow
def test_exposure_compensation_recovers_known_gains(truth, tmp_path):
    g, cams, images = truth
    gen = torch.Generator().manual_seed(2)
    gains = 0.6 + 0.5 * torch.rand(len(cams), 3, generator=gen)  # per photo and channel
    gains[0] = 1.0  # the held-out photo as the scene is
    photos = Views(images=(images * gains[:, :, None, None]).clamp(0, 1), cameras=cams,
                   names=[f"{i}.png" for i in range(len(cams))])
    assert (photos.images == 1).float().mean() < 0.01  # hardly any clipping
    cfg = _frozen_gaussians_config(iterations=240, exposure=True, lr_exposure=0.02)
    trainer = SplatTrainer(photos, tmp_path, cfg, gaussians=g)
    assert trainer.test_ids == [0, 4]
    trainer.train(show_progress=False)
    learned = trainer.exposure.transforms.detach()
    for i in trainer.train_ids:
        diag = torch.diagonal(learned[i, :, :3])
        torch.testing.assert_close(diag, gains[i], atol=0.04, rtol=0)  # the gain, per channel
        assert learned[i, :, :3].fill_diagonal_(0).abs().max() < 0.05 and learned[i, :, 3].abs().max() < 0.03
    # held-out views have no transform: the identity, as never trained
    records = json.loads((tmp_path / "views.json").read_text())["views"]
    assert records[0]["colour_transform"] == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    train_psnr = trainer.evaluate(trainer.train_ids, with_lpips=False)["psnr"]
    without = SplatTrainer(photos, tmp_path / "off", replace(cfg, exposure=False, iterations=1), gaussians=g)
    assert train_psnr > without.evaluate(without.train_ids, with_lpips=False)["psnr"] + 10


@pytest.mark.slow
def test_pose_refinement_recovers_a_known_perturbation(truth, tmp_path):
    g, cams, images = truth
    gen = torch.Generator().manual_seed(3)
    true_deltas = torch.cat([0.02 * torch.randn(len(cams), 3, generator=gen),  # ~1.5 degrees
                             0.04 * torch.randn(len(cams), 3, generator=gen)], 1)  # x extent
    extent = 1.0
    perturbed = torch.stack([refined_c2w(cams.c2w[i].double(), true_deltas[i].double(), extent)
                             for i in range(len(cams))]).float()
    posed = Views(images=images, cameras=replace(cams, c2w=perturbed), names=[f"{i}.png" for i in range(len(cams))])
    cfg = _frozen_gaussians_config(iterations=240, pose_refine=True, lr_pose=2e-3, pose_reg=0.0)
    trainer = SplatTrainer(posed, tmp_path, cfg, gaussians=g)
    trainer.pose.extent = extent  # the perturbation's units (the trainer's extent is the ring's)
    before = trainer.evaluate(trainer.train_ids, with_lpips=False)["psnr"]
    trainer.train(show_progress=False)
    after = trainer.evaluate(trainer.train_ids, with_lpips=False)["psnr"]
    assert after > before + 8, (before, after)
    for i in trainer.train_ids:
        refined = trainer.pose.refined(posed.cameras.c2w[i], i)
        err_before = (perturbed[i] - cams.c2w[i]).abs().max()
        err_after = (refined - cams.c2w[i]).abs().max()
        assert err_after < 0.2 * err_before, (i, err_before, err_after)
    assert trainer.pose.deltas[0].abs().max() == 0  # held out: never moved
    records = json.loads((tmp_path / "views.json").read_text())["views"]
    torch.testing.assert_close(torch.tensor(records[1]["c2w"]), trainer.pose.refined(posed.cameras.c2w[1], 1))


def test_moving_the_world_equals_moving_the_camera():
    g = make_scene(40, degree=0)
    cams = make_cameras(1)
    delta = torch.tensor([0.03, -0.02, 0.05, 0.05, -0.03, 0.02], dtype=torch.float64)
    moved_camera = replace(cams, c2w=refined_c2w(cams.c2w[0], delta, 2.0)[None])
    a = render(g, moved_camera, backend="reference").rgb
    b = render(move_world(g, cams.c2w[0], delta, 2.0), cams, backend="reference").rgb
    torch.testing.assert_close(a, b)
    assert (a - render(g, cams, backend="reference").rgb).abs().max() > 0.05  # the correction does move the view


def test_view_parameters_survive_a_checkpoint(truth, tmp_path):
    g, cams, images = truth
    photos = Views(images=(images * 0.8).clamp(0, 1), cameras=cams, names=[f"{i}.png" for i in range(len(cams))])
    cfg = _frozen_gaussians_config(iterations=12, exposure=True, pose_refine=True, lr_exposure=0.01, lr_pose=1e-3)
    full = SplatTrainer(photos, tmp_path / "a", cfg, gaussians=g)
    for _ in range(12):
        full.train_step()
    first = SplatTrainer(photos, tmp_path / "b", cfg, gaussians=g)
    first.train(show_progress=False, stop_at=5)
    resumed = SplatTrainer(photos, tmp_path / "b", cfg, gaussians=g)
    assert resumed.load_checkpoint() == 5
    for _ in range(7):
        resumed.train_step()
    assert torch.equal(resumed.exposure.transforms, full.exposure.transforms)
    assert torch.equal(resumed.pose.deltas, full.pose.deltas)
    plain = SplatTrainer(photos, tmp_path / "b", replace(cfg, exposure=False, pose_refine=False), gaussians=g)
    plain.load_checkpoint()  # a run without per-view parameters ignores them
    other = SplatTrainer(photos, tmp_path / "c", replace(cfg, exposure=False, pose_refine=False), gaussians=g)
    other.train(show_progress=False, stop_at=3)
    with pytest.raises(ManyviewError, match="no per-view parameters"):
        SplatTrainer(photos, tmp_path / "c", cfg, gaussians=g).load_checkpoint()


def test_a_colour_transform_folded_into_sh_colours_changes_every_direction_alike():
    from manyview.splat.appearance import fold_into_colours
    from manyview.splat.sh import eval_sh

    gen = torch.Generator().manual_seed(0)
    # small coefficients and a transform near the identity: colours stay positive (eval_sh clamps at 0)
    dc = 0.3 * torch.randn(50, 1, 3, generator=gen, dtype=torch.float64)
    rest = 0.05 * torch.randn(50, 8, 3, generator=gen, dtype=torch.float64)
    t = torch.eye(3, 4, dtype=torch.float64) + 0.05 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    dirs = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    before = eval_sh(torch.cat([dc, rest], 1), dirs, 2)
    dc2, rest2 = fold_into_colours(dc, rest, t)
    after = eval_sh(torch.cat([dc2, rest2], 1), dirs, 2)
    assert before.min() > 0 and after.min() > 0
    torch.testing.assert_close(after, before @ t[:, :3].T + t[:, 3])


def test_the_written_splat_shows_the_training_photos_shared_exposure(truth, tmp_path):
    """Colours and per-photo transforms are only determined together; the written splat must show the training
    photos' mean exposure, as the evaluation renders held-out views, and views.json's transforms must act on it."""
    from manyview.splat import read_ply
    from manyview.splat.appearance import compose_transforms, invert_transform

    g, cams, images = truth
    gains = torch.tensor([1.0, 1.3, 1.2, 1.4, 1.0])[:, None].expand(5, 3)  # every training photo brighter
    photos = Views(images=(images * 0.7 * gains[:, :, None, None]).clamp(0, 1), cameras=cams,
                   names=[f"{i}.png" for i in range(len(cams))])
    trainer = SplatTrainer(photos, tmp_path, _frozen_gaussians_config(iterations=60, exposure=True, lr_exposure=0.02),
                           gaussians=g)
    trainer.train(show_progress=False)
    written = read_ply(tmp_path / "splat.ply")
    records = json.loads((tmp_path / "views.json").read_text())["views"]
    for i in range(len(cams)):
        out = render(written, cams[i:i + 1], background=torch.zeros(3))
        expected = trainer.render_views([i])[0]
        if i in trainer.test_ids:  # held out: exactly what the splat shows
            torch.testing.assert_close(out.rgb[0].clamp(0, 1), expected, atol=1e-5, rtol=0)
        else:  # a training view: its recorded transform acts on the splat (where the Gaussians cover the pixel;
            # elsewhere the transform's offset also lit the background)
            got = apply_colour_transform(out.rgb[0], torch.tensor(records[i]["colour_transform"])).clamp(0, 1)
            opaque = out.alpha[0] > 0.999
            assert opaque.sum() > 20
            torch.testing.assert_close(got[:, opaque], expected[:, opaque], atol=1e-4, rtol=0)
    mean = trainer.exposure.mean_transform(trainer.train_ids)
    assert torch.diagonal(mean[:, :3]).mean() < 0.96  # photos at 0.84-0.98 of the colours: the transforms learnt it
    torch.testing.assert_close(compose_transforms(mean, invert_transform(mean)), torch.eye(3, 4), atol=1e-5, rtol=0)
