"""Portrait pictures in DUSt3R's pairwise network under its training configuration (ManyAR_PatchEmbed,
landscape_only), against the official outputs in tests/fixtures/fast3r_portrait/dust3r_pairwise (DUSt3R's
AsymmetricCroCo3DStereo as vendored in facebookresearch/fast3r @ 33104d4; the fixture's README says how)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manyview.models.pairwise import PairwiseNet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fast3r_portrait" / "dust3r_pairwise"
KEYS = ("pts1", "conf1", "pts2_in_1", "conf2")


@pytest.fixture(scope="module")
def fixture():
    return (PairwiseNet.from_pretrained(FIXTURE), load_file(FIXTURE / "inputs.safetensors"),
            load_file(FIXTURE / "outputs.safetensors"))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("case", ["portrait", "sizes"])
def test_portrait_pairs_match_official(fixture, case):
    """Each pair with its pictures in their real orientation (the official inputs store portrait ones transposed
    to landscape, with true_shape their real size); the outputs, turned into that stored layout, are the official
    ones."""
    model, inputs, outputs = fixture
    assert model.config.landscape_only and model.config.patch_embed_cls == "ManyAR_PatchEmbed"
    portraits = 0
    for b in range(inputs[f"{case}.view1.img"].shape[0]):
        real, turned = [], []
        for i in (1, 2):
            img = inputs[f"{case}.view{i}.img"][b: b + 1]
            turned.append(tuple(inputs[f"{case}.view{i}.true_shape"][b].tolist()) != tuple(img.shape[-2:]))
            real.append((img.transpose(-1, -2) if turned[-1] else img) / 2 + 0.5)
        portraits += sum(turned)
        with torch.no_grad():
            out = model(*real)
        for key, got in zip(KEYS, out):
            ref = outputs[f"{case}.{key}"][b: b + 1]
            assert _rel(got, ref.transpose(1, 2) if turned[KEYS.index(key) // 2] else ref) < 1e-4, (b, key)
    assert portraits >= 2

