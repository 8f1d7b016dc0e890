"""Numerical parity with the official Fast3R forward pass (fixture made by facebookresearch/fast3r @ 33104d4)."""

from pathlib import Path

import pytest
import torch

from manyview.hub import load_weights, read_config, read_state_dict
from manyview.models.fast3r import Fast3R, Fast3RConfig

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "parity" / "fast3r_tiny"  # ../shared beside the checkout
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="parity fixtures (../shared beside the checkout) not available")
KEYS = ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    model = Fast3R.from_pretrained(FIXTURE)
    return model, load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_checkpoint_loads_with_no_missing_or_unexpected_keys():
    raw = read_config(FIXTURE / "config.json")
    config = Fast3RConfig.from_dict(raw)
    assert config.to_dict() == raw  # the config round-trips exactly (head widths included, Infinity kept)
    assert config.decoder_args.hooks == [0, 5, 7, 10]
    model = Fast3R(config)
    tensors, aliases = read_state_dict(FIXTURE / "model.safetensors")
    assert len(tensors) == 280 and len(aliases) == 8  # layer_rn aliases stored once, as released
    expected = model.state_dict()
    assert set(tensors) | set(aliases) == set(expected)
    load_weights(model, tensors, aliases, strict=True)  # raises on any missing / unexpected / mismatched key
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[aliases.get(name, name)]), name


@pytest.mark.parametrize("case", ["random_idx", "sequential_idx"])
def test_outputs_match_official(fixture, case):
    model, inputs, outputs = fixture
    views = [{"img": inputs[f"view{v}.img"], "true_shape": inputs[f"view{v}.true_shape"]} for v in range(3)]
    with torch.no_grad():
        result = model.forward_views(views, image_ids=inputs[f"{case}.image_ids"])
    for v in range(3):
        for key in KEYS:
            assert result[v][key].dtype == torch.float32
            assert _rel(result[v][key], outputs[f"{case}.view{v}.{key}"]) < 1e-4, (v, key)

    # The tensor API (images in [0, 1], (B, N, 3, H, W)) computes the same function.
    images = torch.stack([inputs[f"view{v}.img"] for v in range(3)], dim=1)
    out = model.infer((images + 1) / 2, image_ids=inputs[f"{case}.image_ids"])
    ref = {k: torch.stack([outputs[f"{case}.view{v}.{k}"] for v in range(3)], dim=1) for k in KEYS}
    assert _rel(out.pts3d_global, ref["pts3d_in_other_view"]) < 1e-4
    assert _rel(out.conf_global, ref["conf"]) < 1e-4
    assert _rel(out.pts3d_local, ref["pts3d_local"]) < 1e-4
    assert _rel(out.conf_local, ref["conf_local"]) < 1e-4


def test_default_inference_indices_are_sequential(fixture):
    model, inputs, outputs = fixture
    images = torch.stack([inputs[f"view{v}.img"] for v in range(3)], dim=1)
    out = model.infer((images + 1) / 2)
    assert torch.equal(out.image_ids, inputs["sequential_idx.image_ids"].double())
    ref = torch.stack([outputs[f"sequential_idx.view{v}.pts3d_in_other_view"] for v in range(3)], dim=1)
    assert _rel(out.pts3d_global, ref) < 1e-4


def test_intermediates_match_official(fixture):
    model, inputs, outputs = fixture
    images = torch.stack([inputs[f"view{v}.img"] for v in range(3)], dim=1)  # (B, N, 3, H, W) in [-1, 1]
    with torch.no_grad():
        tokens = model.encode(images)  # (B, N, P, C)
        assert _rel(tokens.transpose(0, 1), outputs["sequential_idx.encoder_tokens"]) < 1e-5
        emb = model.index_embedding(inputs["sequential_idx.image_ids"])  # (B, N, D)
        B, N, P, C = tokens.shape
        layers = model.decoder(tokens.reshape(B, N * P, C), emb.repeat_interleave(P, dim=1), keep=list(range(11)))
    for i in range(1, 11):
        assert _rel(layers[i], outputs[f"sequential_idx.decoder_out.{i}"]) < 1e-5, i
