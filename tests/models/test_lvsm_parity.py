"""Numerical parity with the official LVSM and Efficient-LVSM implementations (fixtures in /work/shared/parity)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manyview.geometry.poses import normalize_poses
from manyview.hub import read_state_dict
from manyview.models.lvsm import LVSMDecoderOnly
from manyview.models.lvsm_base import posed_images, ray_conditioning, view_rays
from manyview.models.lvsm_family import build_model, load_lvsm
from manyview.models.lvsm_weights import clean_state_dict, config_from_yaml
from manyview.scene import Cameras

PARITY = Path(__file__).resolve().parents[3] / "shared" / "parity"  # ../shared beside the checkout
pytestmark = pytest.mark.skipif(not PARITY.is_dir(), reason="parity fixtures (../shared beside the checkout) not available")
TOL = 1e-5
H, W = 32, 48


def _fixture(name):
    folder = PARITY / name
    return folder, load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


def _cams(fxfycxcy, c2w):
    return Cameras(fxfycxcy, c2w, torch.tensor([H, W]))


@pytest.fixture(scope="module")
def lvsm():
    return _fixture("lvsm_tiny")


@pytest.fixture(scope="module")
def efficient():
    return _fixture("efficient_lvsm_tiny")


@pytest.mark.parametrize("name", ["lvsm_tiny", "efficient_lvsm_tiny"])
def test_container_and_safetensors_load_with_exactly_the_models_keys(name):
    folder = PARITY / name
    config = config_from_yaml(folder / "config.yaml")
    container = clean_state_dict(read_state_dict(folder / "checkpoint.pt")[0])
    flat = clean_state_dict(read_state_dict(folder / "model.safetensors")[0])
    model = build_model(config)
    assert set(container) == set(flat) == set(model.state_dict())  # zero missing, zero unexpected
    model.load_tensors(container)  # strict: raises on any missing, unexpected or mis-shaped key
    for key, value in model.state_dict().items():
        assert torch.equal(value, flat[key]), key


@pytest.mark.parametrize("file", ["checkpoint.pt", "model.safetensors"])
def test_lvsm_render_matches_official(lvsm, file):
    folder, i, o = lvsm
    model = load_lvsm(folder / file, folder / "config.yaml")
    assert isinstance(model, LVSMDecoderOnly)
    with torch.no_grad():
        raw = model(i["input_images"], i["input_fxfycxcy"], i["input_c2w"], i["target_fxfycxcy"], i["target_c2w"])
        api = model.render(i["input_images"], _cams(i["input_fxfycxcy"], i["input_c2w"]),
                           _cams(i["target_fxfycxcy"], i["target_c2w"]), target_batch_size=1)
    assert (raw - o["render"]).abs().max() < TOL
    assert (api - o["render"]).abs().max() < TOL


def test_lvsm_tokens_and_last_block_match_official(lvsm):
    folder, i, o = lvsm
    model = load_lvsm(folder / "model.safetensors", folder / "config.yaml")
    captured = {}
    model.transformer_blocks[-1].register_forward_hook(lambda m, a, out: captured.setdefault("last", out))
    with torch.no_grad():
        tokens_in = model.tokenize_inputs(i["input_images"], i["input_fxfycxcy"], i["input_c2w"])
        tokens_t = model.tokenize_targets(i["target_fxfycxcy"], i["target_c2w"], H, W)
        model(i["input_images"], i["input_fxfycxcy"], i["input_c2w"], i["target_fxfycxcy"], i["target_c2w"])
    assert (tokens_in.flatten(0, 1) - o["input_tokens"]).abs().max() < TOL
    assert (tokens_t.flatten(0, 1) - o["target_tokens"]).abs().max() < TOL
    assert (captured["last"] - o["last_block_out"]).abs().max() < TOL


@pytest.mark.parametrize("name", ["lvsm_tiny", "efficient_lvsm_tiny"])
def test_rays_and_pose_normalisation_match_official(name):
    _, i, o = _fixture(name)
    for side in ("input", "target"):
        ray_o, ray_d = view_rays(i[f"{side}_fxfycxcy"], i[f"{side}_c2w"], H, W)
        assert (ray_o - o[f"{side}_ray_o"]).abs().max() < TOL
        assert (ray_d - o[f"{side}_ray_d"]).abs().max() < TOL
    plucker = ray_conditioning(i["input_fxfycxcy"], i["input_c2w"], H, W)
    expected = torch.cat([torch.cross(o["input_ray_o"], o["input_ray_d"], dim=2), o["input_ray_d"]], dim=2)
    assert (plucker - expected).abs().max() < TOL
    assert (posed_images(i["input_images"], i["input_fxfycxcy"], i["input_c2w"])[:, :, :3]
            - (2 * i["input_images"] - 1)).abs().max() == 0
    normalized = normalize_poses(i["raw_c2w_all_views"], scale_factor=1.35)
    assert (normalized - i["normalized_c2w_all_views"]).abs().max() < TOL


@pytest.mark.parametrize("file", ["checkpoint.pt", "model.safetensors"])
def test_efficient_lvsm_render_matches_official(efficient, file):
    folder, i, o = efficient
    model = load_lvsm(folder / file, folder / "config.yaml")
    targets = _cams(i["target_fxfycxcy"], i["target_c2w"])
    with torch.no_grad():
        two = model(i["input_images"], i["input_fxfycxcy"], i["input_c2w"], i["target_fxfycxcy"], i["target_c2w"])
        three = model.render(i["incremental.input_images"],
                             _cams(i["incremental.input_fxfycxcy"], i["incremental.input_c2w"]), targets)
    assert (two - o["render"]).abs().max() < TOL
    assert (three - o["render_3in"]).abs().max() < TOL


def test_efficient_lvsm_incremental_cache_matches_official(efficient):
    folder, i, o = efficient
    model = load_lvsm(folder / "checkpoint.pt")  # config inferred from the tensor shapes
    images = i["incremental.input_images"]
    cams = _cams(i["incremental.input_fxfycxcy"], i["incremental.input_c2w"])
    targets = _cams(i["target_fxfycxcy"], i["target_c2w"])
    with torch.no_grad():
        cache = model.encode(images[:, :1], cams[:, :1])
        for step in range(3):
            if step:
                cache.add(images[:, step], cams[:, step])  # one view, (B, 3, H, W) with Cameras (B,)
            render = model.render(cache, targets)
            assert (render - o[f"incremental.step{step}.render"]).abs().max() < TOL, step
    k, v = cache.layer_kv(0)  # (B, heads, tokens, head_dim); the fixture stores (B, tokens, heads, head_dim)
    assert (k.transpose(1, 2) - o["incremental.cache_layer0_k"]).abs().max() < TOL
    assert (v.transpose(1, 2) - o["incremental.cache_layer0_v"]).abs().max() < TOL
