"""What Fast3R and the pairwise (DUSt3R) network share: one validation of both config layouts, one orientation
rule, one pointmap head."""

import math

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.models.dust3r_family import (
    FamilySpec,
    PointmapHead,
    patch_grid,
    stored_transposed,
)
from manyview.models.fast3r import Fast3RConfig, fast3r_config
from manyview.models.pairwise import PairwiseConfig


def _fast3r_with(**head):
    d = fast3r_config("tiny").to_dict()
    return Fast3RConfig.from_dict({**d, "head_args": {**d["head_args"], **head}})


@pytest.mark.parametrize("field,value,message", [
    ("conf_mode", ["tanh", 1, math.inf], "conf_mode"),
    ("depth_mode", ["exp", 0, math.inf], "depth_mode"),
    ("layer_dims", [4, 4, 8], "layer_dims must have four entries"),
    ("head_type", "linear", "only dpt/pts3d"),
])
def test_both_layouts_are_refused_with_the_same_words(field, value, message):
    with pytest.raises(ManyviewError, match=message) as fast3r:
        _fast3r_with(**{field: value})
    with pytest.raises(ManyviewError, match=message) as pairwise:
        PairwiseConfig(**{field: value})
    problem = lambda e: e.value.message.split(": ", 1)[1]  # noqa: E731  (after "invalid <model> config")
    assert problem(fast3r) == problem(pairwise)


def test_decoder_rope_needs_head_dimensions_divisible_by_four_only_where_it_rotates():
    # Fast3R's fusion transformer has no RoPE: head dimension 6 is fine there, not in DUSt3R's decoders.
    d = fast3r_config("tiny").to_dict()
    Fast3RConfig.from_dict({**d, "decoder_args": {**d["decoder_args"], "embed_dim": 24, "num_heads": 4}})
    with pytest.raises(ManyviewError, match="decoder head dimension 6 must be divisible by 4"):
        PairwiseConfig(dec_embed_dim=24, dec_num_heads=4)
    with pytest.raises(ManyviewError, match="repeated DPT hooks"):
        PairwiseConfig(dec_depth=2)
    with pytest.raises(ManyviewError, match="encoder width 30 is not divisible by its 4 heads"):
        PairwiseConfig(enc_embed_dim=30, enc_num_heads=4)


def test_matching_presets_describe_the_same_architecture():
    f, p = fast3r_config("small").family, PairwiseConfig.matching("small").family
    same = ("patch_size", "pos_embed", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
            "dec_num_heads", "depth_mode", "conf_mode", "feature_dim", "last_dim", "layer_dims")
    assert {k: getattr(f, k) for k in same} == {k: getattr(p, k) for k in same}
    assert not f.decoder_rope and p.decoder_rope
    assert f.hooks == p.hooks == [0, 6, 9, 12] and f.dpt_widths == (128, 64, [48, 96, 192, 384])


def test_true_shape_tells_which_samples_are_stored_transposed():
    stored = torch.rand(3, 3, 32, 48)
    assert stored_transposed(stored, None).tolist() == [False] * 3  # no true_shape: every sample as stored
    flags = stored_transposed(stored, torch.tensor([[32, 48], [48, 32], [32, 48]]))
    assert flags.tolist() == [False, True, False]
    assert stored_transposed(torch.rand(1, 3, 32, 32), torch.tensor([[32, 32]])).tolist() == [False]  # square
    with pytest.raises(ManyviewError, match="view 2: true_shape \\(32, 64\\) of sample 1 is neither"):
        stored_transposed(stored, torch.tensor([[32, 48], [32, 64], [48, 32]]), "view 2")
    with pytest.raises(ManyviewError, match="true_shape must be \\(B, 2\\)"):
        stored_transposed(stored, torch.tensor([[32, 48]]))
    with pytest.raises(ManyviewError, match="not a multiple of the patch size 16"):
        patch_grid(torch.rand(1, 3, 30, 32), 16)


def test_float32_head_ignores_autocast_and_the_other_follows_it(perturb):
    spec = PairwiseConfig(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=4,
                          dec_num_heads=2, feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8]).family
    assert isinstance(spec, FamilySpec)
    torch.manual_seed(0)
    exact, follows = perturb(PointmapHead(spec, float32=True)), PointmapHead(spec, float32=False).eval()
    follows.load_state_dict(exact.state_dict())
    layers = [torch.randn(2, 6, c, generator=torch.Generator().manual_seed(c)) for c in (32, 16, 16, 16)]
    with torch.no_grad():
        ref = exact(layers, (2, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = exact(layers, (2, 3)), follows(layers, (2, 3))
    assert a[0].dtype == b[0].dtype == torch.float32 and a[0].shape == (2, 32, 48, 3)
    assert torch.equal(a[0], ref[0]) and torch.equal(a[1], ref[1])
    assert not torch.equal(b[0], ref[0])  # computed in bfloat16, only the output cast back
    assert torch.allclose(b[0], ref[0], rtol=0.1, atol=0.1 * ref[0].abs().max().item())
