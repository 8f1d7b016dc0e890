"""LVSM training: the VGG-19 perceptual loss and its weight files, view selection, pose normalisation, both data
sources, presets, and a few real optimiser steps that lower the loss."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from manyview.errors import ManyviewError
from manyview.geometry.poses import normalize_poses
from manyview.synth.samples import EVAL_SEED_START
from manyview.train import TrainConfig, train
from manyview.train.config import OptimConfig
from manyview.train.lvsm_task import (BUNDLED_MODELS, LVSMDataConfig, LVSMTask, LVSMTaskConfig, RE10KSource,
                                      TINY_MODELS, choose_frames, make_sample, preset)
from manyview.train.perceptual import (_CONV, VGG19_ENV, PerceptualLoss, load_perceptual_loss,
                                       perceptual_loss_or_none, read_vgg19_weights, vgg19_features)
from manyview.train.task import sample_generator


@pytest.fixture(autouse=True)
def no_vgg_env(monkeypatch):
    monkeypatch.delenv(VGG19_ENV, raising=False)


@pytest.fixture(scope="module")
def vgg_file(vgg_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19.safetensors"
    save_file(vgg_state, str(path))
    return path


@pytest.fixture(scope="module")
def vgg_state():
    torch.manual_seed(0)
    net = vgg19_features()
    for m in net:  # keep activations O(1) through 14 random layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=(2.0 / (9 * m.in_channels)) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    return {f"features.{k}": v.clone() for k, v in net.state_dict().items()}


def reference_perceptual(state, pred, target, mode):
    """LVSM's formula written out layer by layer with functional ops and named VGG layers."""
    def feats(x):
        x = x * 255 - torch.tensor([123.68, 116.779, 103.939]).view(3, 1, 1) if mode == "matconvnet" else (
            (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
        out, conv = {}, {name: i for i, (name, _, _) in _CONV.items()}
        for block, n_convs in zip(range(1, 6), (2, 2, 4, 4, 2)):
            for j in range(1, n_convs + 1):
                i = conv[f"conv{block}_{j}"]
                x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
                out[f"relu{block}_{j}"] = x
            if block < 5:
                x = F.avg_pool2d(x, 2)
        return out

    fp, ft = feats(pred), feats(target)
    total = (pred * 255 - target * 255).abs().mean()
    for name, w in (("relu1_2", 1 / 2.6), ("relu2_2", 1 / 4.8), ("relu3_2", 1 / 3.7), ("relu4_2", 1 / 5.6),
                    ("relu5_2", 10 / 1.5)):
        total = total + w * (fp[name] - ft[name]).abs().mean()
    return total / 255


def test_perceptual_loss_matches_the_formula_and_trains_pred_only(vgg_state, vgg_file):
    loss = load_perceptual_loss(vgg_file)
    assert loss.input_mode == "torchvision" and not any(p.requires_grad for p in loss.parameters())
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 32, 32, generator=g)
    value = loss(pred, target)
    torch.testing.assert_close(value, reference_perceptual(vgg_state, pred.detach(), target, "torchvision"),
                               rtol=1e-4, atol=1e-6)
    assert loss(target, target).item() == 0.0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # batch axes are flattened: (B, V, 3, H, W) gives the same value
    torch.testing.assert_close(loss(pred.detach()[None], target[None]), value.detach())


def test_matconvnet_file_loads_the_same_kernels(vgg_state, tmp_path):
    from scipy.io import savemat

    layers = []
    for i, (name, _, c_out) in _CONV.items():
        w = np.empty((1, 2), dtype=object)
        w[0, 0] = vgg_state[f"features.{i}.weight"].permute(2, 3, 1, 0).numpy()  # MatConvNet: (kh, kw, in, out)
        w[0, 1] = vgg_state[f"features.{i}.bias"].numpy().reshape(c_out, 1)
        layers += [{"name": name, "type": "conv", "weights": w},
                   {"name": name.replace("conv", "relu"), "type": "relu", "weights": np.zeros((0, 0))}]
    cell = np.empty((1, len(layers)), dtype=object)
    for j, layer in enumerate(layers):
        cell[0, j] = layer
    path = tmp_path / "imagenet-vgg-verydeep-19.mat"
    savemat(str(path), {"layers": cell})
    state, mode = read_vgg19_weights(path)
    assert mode == "matconvnet"
    for k in state:
        torch.testing.assert_close(state[k], vgg_state[k])
    loss = PerceptualLoss(state, mode)
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    torch.testing.assert_close(loss(pred, target), reference_perceptual(vgg_state, pred, target, "matconvnet"),
                               rtol=1e-4, atol=1e-6)


def test_weight_file_errors_name_the_file(vgg_state, tmp_path):
    with pytest.raises(ManyviewError, match="not found") as e:
        read_vgg19_weights(tmp_path / "missing.pth")
    assert "missing.pth" in str(e.value)
    partial = {k: v for k, v in vgg_state.items() if not k.startswith("features.30.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ManyviewError, match="features.30") as e:
        read_vgg19_weights(tmp_path / "partial.safetensors")
    assert "partial.safetensors" in str(e.value)
    # a file that is named but broken is an error, never a silent switch to MSE alone
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ManyviewError, match="junk.pth"):
        perceptual_loss_or_none(tmp_path / "junk.pth")


def test_without_vgg_weights_the_task_warns_and_uses_mse_alone():
    cfg = tiny_task()
    with pytest.warns(UserWarning, match="perceptual loss disabled"):
        task = LVSMTask(cfg)
    assert task.perceptual is None
    model = task.build_model()
    batch = collate([task.sample(i, sample_generator(0, i)) for i in range(2)])
    loss, metrics = task.loss(model, batch)
    pred = model(batch["input_images"], batch["input_fxfycxcy"], batch["input_c2w"], batch["target_fxfycxcy"],
                 batch["target_c2w"])
    torch.testing.assert_close(loss, (pred - batch["target_images"]).square().mean())
    assert set(metrics) == {"mse", "psnr"}


def test_task_with_vgg_weights_adds_half_the_perceptual_term(vgg_file, monkeypatch):
    monkeypatch.setenv(VGG19_ENV, str(vgg_file))
    task = LVSMTask(tiny_task())
    model = task.build_model()
    batch = collate([task.sample(i, sample_generator(0, i)) for i in range(2)])
    loss, metrics = task.loss(model, batch)
    assert set(metrics) == {"mse", "psnr", "perceptual"}
    torch.testing.assert_close(loss, metrics["mse"] + 0.5 * metrics["perceptual"])


# --------------------------------------------------------------------------------------------- view selection
def tiny_task(**data) -> LVSMTaskConfig:
    run = preset("lvsm", "tiny")
    return dataclasses.replace(run.task, data=dataclasses.replace(run.task.data, num_scenes=4, frames=6,
                                                                  cache_scenes=8, **data))


def collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


@pytest.mark.parametrize("target_has_input", [True, False])
@pytest.mark.parametrize("num_inputs", [1, 2, 3])
def test_choose_frames_follows_the_released_view_selector(target_has_input, num_inputs):
    data = LVSMDataConfig(num_input_views=num_inputs, num_target_views=4, min_frame_dist=3, max_frame_dist=6,
                          target_has_input=target_has_input)
    spans = set()
    for seed in range(60):
        inputs, targets = choose_frames(12, data, torch.Generator().manual_seed(seed))
        assert len(inputs) == num_inputs and len(targets) == 4
        lo = inputs[0]
        hi = lo if num_inputs == 1 else inputs[1]
        if num_inputs > 1:
            spans.add(hi - lo)
            assert 3 <= hi - lo <= 6, "the first two inputs are the window's ends"
            assert all(lo < f < hi for f in inputs[2:]), "extra inputs lie inside the window"
            assert len(set(inputs)) == num_inputs
            assert all(lo <= t <= hi for t in targets)
            pool = hi - lo + 1 - (0 if target_has_input else num_inputs)
            if pool >= 4:
                assert len(set(targets)) == 4, "targets drawn without replacement when the window allows"
            if not target_has_input:
                assert not set(targets) & set(inputs)
    if num_inputs > 1:
        assert spans == {3, 4, 5, 6}
    # a scene shorter than the window: clamped, still valid
    inputs, targets = choose_frames(3, data, torch.Generator().manual_seed(0))
    assert max(inputs + targets) <= 2


def test_make_sample_normalises_all_views_together():
    g = torch.Generator().manual_seed(0)
    from manyview.geometry.rotation import random_rotation
    from manyview.geometry.transforms import rigid

    c2w = rigid(random_rotation(6, generator=g), torch.randn(6, 3, generator=g) * 5 + 10)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    f = torch.tensor([10.0, 10, 4, 4]).expand(6, 4)
    s = make_sample(images, f, c2w, [0, 5], [2, 3, 0], 1.35)
    assert s["input_images"].shape == (2, 3, 8, 8) and s["target_images"].shape == (3, 3, 8, 8)
    torch.testing.assert_close(s["input_images"][0], images[0].float() / 255)
    torch.testing.assert_close(s["target_images"][2], s["input_images"][0])
    poses = torch.cat([s["input_c2w"], s["target_c2w"]])
    torch.testing.assert_close(poses, normalize_poses(c2w[[0, 5, 2, 3, 0]].double(), 1.35).float())
    # the largest camera coordinate over all five views is 1 / 1.35, and relative rotations are kept
    assert abs(poses[:, :3, 3].abs().max().item() - 1 / 1.35) < 1e-5
    rel = lambda p, i, j: p[i, :3, :3].T @ p[j, :3, :3]  # noqa: E731
    torch.testing.assert_close(rel(poses, 0, 1), rel(c2w[[0, 5]], 0, 1).float(), atol=1e-5, rtol=1e-5)


def test_synthetic_samples_are_deterministic_and_held_out_seeds_are_never_drawn(monkeypatch):
    with pytest.warns(UserWarning):
        task = LVSMTask(tiny_task())
    drawn = []
    real = task.source.trajectory
    monkeypatch.setattr(task.source, "trajectory", lambda seed: drawn.append(seed) or real(seed))
    a = task.sample(3, sample_generator(7, 3))
    b = task.sample(3, sample_generator(7, 3))
    c = task.sample(4, sample_generator(7, 4))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert a["input_images"].shape == (2, 3, 32, 32) and a["target_images"].shape == (2, 3, 32, 32)
    assert a["input_images"].dtype == torch.float32 and 0 <= a["input_images"].min() <= a["input_images"].max() <= 1
    for i in range(5, 30):
        task.sample(i, sample_generator(7, i))
    assert drawn and max(drawn) < 4 < EVAL_SEED_START
    with pytest.raises(ManyviewError, match="held-out"):
        LVSMDataConfig(num_scenes=EVAL_SEED_START + 1).check(8)


def test_re10k_source_crops_frames_and_moves_the_cameras(tmp_path):
    from manyview.io.realestate10k import scene_from_views, write_chunks
    from manyview.synth import generate

    scenes = [scene_from_views(f"s{i}", generate(40 + i, "room", 8, 48, 64)[1]) for i in range(2)]
    write_chunks(tmp_path / "re10k", scenes)
    data = LVSMDataConfig(source="re10k", root=tmp_path / "re10k", image_size=32, num_target_views=3,
                          min_frame_dist=2, max_frame_dist=5, samples_per_chunk=4)
    data.check(8)
    src = RE10KSource(data)
    s = src.sample(0, sample_generator(0, 0))
    assert s["input_images"].shape == (2, 3, 32, 32) and s["target_images"].shape == (3, 3, 32, 32)
    # 48 x 64 -> scaled to 32 x 43 (cover), centre-cropped to 32 x 32: fx scales by 2/3, cx moves to the crop centre
    f = s["input_fxfycxcy"][0]
    assert abs(f[2].item() - 16) < 0.6 and abs(f[3].item() - 16) < 1e-4
    assert s["input_c2w"][:, :3, 3].abs().max() <= 1 / 1.35 + 1e-5
    with pytest.raises(ManyviewError, match="no .torch chunks"):
        RE10KSource(dataclasses.replace(data, root=tmp_path))


def test_presets_fit_the_bundle_limit_and_compare_at_equal_depth():
    for variant in ("lvsm", "efficient-lvsm"):
        for name in ("tiny", "bundled"):
            run = preset(variant, name)
            run.task.data.check(run.task.model.patch_size)
            assert run.task.data.image_size == run.task.model.image_size
    sizes = {}
    for variant, cfg in BUNDLED_MODELS.items():
        with torch.device("meta"):
            from manyview.models.lvsm_family import build_model

            model = build_model(cfg)
        sizes[variant] = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert max(sizes.values()) <= 25, sizes
    lv, ef = BUNDLED_MODELS["lvsm"], BUNDLED_MODELS["efficient-lvsm"]
    assert lv.d == ef.d and lv.n_layer == 2 * ef.n_layer, "equal width and equal number of blocks"
    assert TINY_MODELS["lvsm"].variant == "decoder_only" and TINY_MODELS["efficient-lvsm"].variant == "efficient"
    with pytest.raises(ManyviewError, match="preset"):
        preset("lvsm", "huge")


# --------------------------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lvsm", "efficient-lvsm"])
def test_a_few_steps_lower_the_loss_and_export_a_loadable_model(variant, tmp_path):
    from manyview.models.lvsm_family import load_lvsm

    run = preset(variant, "tiny")
    task_cfg = dataclasses.replace(run.task, data=dataclasses.replace(run.task.data, num_scenes=2, frames=6,
                                                                      num_target_views=2))
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=12, batch_size=4, optim=OptimConfig(lr=3e-3),
                      log_every=1, ckpt_every=12, keep_last=1, progress=False, device="cpu", seed=3)
    with pytest.warns(UserWarning, match="perceptual"):
        task = LVSMTask(task_cfg)
    result = train(cfg, task)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    model = load_lvsm(tmp_path / "run" / "final")
    assert model.variant == task_cfg.model.variant and model.config == task_cfg.model
    assert os.path.getsize(tmp_path / "run" / "final" / "model.safetensors") < 25 * 2**20
