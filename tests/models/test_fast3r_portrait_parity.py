"""Portrait views under Fast3R's training configuration (ManyAR_PatchEmbed, landscape_only), against outputs of the
official code (tests/fixtures/fast3r_portrait, made by facebookresearch/fast3r @ 33104d4; its README says how)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manyview.hub import read_config
from manyview.models.fast3r import Fast3R, Fast3RConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fast3r_portrait"
KEYS = ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local")
CASES = ("portrait", "mixed_batch", "sizes")


@pytest.fixture(scope="module")
def fixture():
    return (Fast3R.from_pretrained(FIXTURE), load_file(FIXTURE / "inputs.safetensors"),
            load_file(FIXTURE / "outputs.safetensors"))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _num_views(inputs, case):
    return sum(1 for k in inputs if k.startswith(f"{case}.view") and k.endswith(".img"))


def _stored_transposed(inputs, case, v, b):
    """Whether sample b of view v is a portrait picture stored transposed (true_shape is the real (H, W))."""
    return tuple(inputs[f"{case}.view{v}.true_shape"][b].tolist()) != tuple(inputs[f"{case}.view{v}.img"].shape[-2:])


def test_the_fixture_is_the_training_configuration():
    config = Fast3RConfig.from_dict(read_config(FIXTURE / "config.json"))
    assert config.encoder_args.patch_embed_cls == "ManyAR_PatchEmbed" and config.head_args.landscape_only


@pytest.mark.parametrize("case", CASES)
def test_stored_layout_with_true_shape_matches_official(fixture, case):
    """The official call as it is: portrait samples stored transposed to landscape, true_shape their real size,
    views whose batch mixes portrait and landscape samples; outputs in the same stored layout."""
    model, inputs, outputs = fixture
    n = _num_views(inputs, case)
    assert any(_stored_transposed(inputs, case, v, b) for v in range(n) for b in range(2))  # portrait samples
    views = [{"img": inputs[f"{case}.view{v}.img"], "true_shape": inputs[f"{case}.view{v}.true_shape"]}
             for v in range(n)]
    with torch.no_grad():
        result = model.forward_views(views, image_ids=inputs[f"{case}.image_ids"])
    for v in range(n):
        for key in KEYS:
            assert _rel(result[v][key], outputs[f"{case}.view{v}.{key}"]) < 1e-4, (v, key)


@pytest.mark.parametrize("case", CASES)
def test_pictures_in_their_real_orientation_give_the_official_function(fixture, case):
    """manyview's own convention (every picture as it is, no true_shape): each sample alone, outputs in the real
    orientation, equal to the official ones turned out of their stored layout; the encoder tokens too."""
    model, inputs, outputs = fixture
    n = _num_views(inputs, case)
    for b in range(2):
        real = []
        for v in range(n):
            img = inputs[f"{case}.view{v}.img"][b: b + 1]
            real.append(img.transpose(-1, -2) if _stored_transposed(inputs, case, v, b) else img)
        with torch.no_grad():
            result = model.forward_views([{"img": x} for x in real], image_ids=inputs[f"{case}.image_ids"][b: b + 1])
            tokens = [model.encode(x[:, None])[:, 0] for x in real]
        for v in range(n):
            turn = _stored_transposed(inputs, case, v, b)
            for key in KEYS:
                ref = outputs[f"{case}.view{v}.{key}"][b: b + 1]
                assert _rel(result[v][key], ref.transpose(1, 2) if turn else ref) < 1e-4, (b, v, key)
            # official tokens run row-major over the real patch grid, with (y, x) positions on it
            assert _rel(tokens[v], outputs[f"{case}.view{v}.encoder_tokens"][b: b + 1]) < 1e-5, (b, v)
            h, w = (s // 16 for s in real[v].shape[-2:])
            grid = torch.cartesian_prod(torch.arange(h), torch.arange(w))
            assert torch.equal(outputs[f"{case}.view{v}.encoder_pos"][b], grid)


def test_tensor_api_runs_portrait_views_like_the_official_code(fixture):
    """infer() on (B, N, 3, H, W) pictures in [0, 1]: the mixed_batch case's sample 0 has every view portrait,
    its sample 1 every view landscape."""
    model, inputs, outputs = fixture
    for b in range(2):
        stored = torch.stack([inputs[f"mixed_batch.view{v}.img"][b] for v in range(2)])  # (N, 3, 32, 48)
        portrait = _stored_transposed(inputs, "mixed_batch", 0, b)
        out = model.infer((stored.transpose(-1, -2) if portrait else stored) / 2 + 0.5)
        assert out.pts3d_global.shape == ((1, 2, 48, 32, 3) if portrait else (1, 2, 32, 48, 3))
        for got, key in ((out.pts3d_global, "pts3d_in_other_view"), (out.conf_global, "conf"),
                         (out.pts3d_local, "pts3d_local"), (out.conf_local, "conf_local")):
            ref = torch.stack([outputs[f"mixed_batch.view{v}.{key}"][b] for v in range(2)])[None]
            assert _rel(got, ref.transpose(2, 3) if portrait else ref) < 1e-4, (b, key)
