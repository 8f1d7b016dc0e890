"""Pairwise (DUSt3R-style) network: shapes, the decoder block's formula, symmetry, encoder caching, checkpoints."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from manyview.errors import ManyviewError
from manyview.hub import deduplicate
from manyview.models.fast3r import Fast3R
from manyview.models.pairwise import PairwiseConfig, PairwiseNet, pairwise_config
from manyview.nn.attention import attention_reference
from manyview.nn.blocks import DecoderBlock
from manyview.nn.embeddings import patch_positions
from manyview.nn.rope import RoPE2D
from manyview.recon.pairs import make_pairs

MICRO = dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=4, dec_num_heads=2,
             feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8])



@pytest.fixture(scope="module")
def micro(perturb):
    torch.manual_seed(0)
    return perturb(PairwiseNet(PairwiseConfig(**MICRO)))


def _images(n, h=32, w=48, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_shapes_confidence_and_mixed_sizes(micro):
    with torch.no_grad():
        out = micro(_images(2), _images(2, seed=1))
        mixed = micro(_images(2), _images(2, 48, 16, seed=2))
    assert out.pts1.shape == (2, 32, 48, 3) and out.pts2_in_1.shape == (2, 32, 48, 3)
    assert out.conf1.shape == (2, 32, 48) and out.conf2.shape == (2, 32, 48)
    assert all(torch.isfinite(t).all() for t in out) and (out.conf1 > 1).all() and (out.conf2 > 1).all()
    assert mixed.pts1.shape == (2, 32, 48, 3) and mixed.pts2_in_1.shape == (2, 48, 16, 3)
    assert torch.allclose(mixed.pts1[0], micro(_images(1), _images(1, 48, 16, seed=2)).pts1[0], atol=1e-5)


def test_each_view_depends_on_the_other(micro):
    """Cross-attention is live: changing image 2 changes view 1's pointmap (and only through the decoder)."""
    a, b, c = _images(1), _images(1, seed=1), _images(1, seed=2)
    with torch.no_grad():
        ab, ac = micro(a, b), micro(a, c)
    assert (ab.pts1 - ac.pts1).abs().max() > 1e-4


def test_decoder_block_matches_the_explicit_formula(perturb):
    """x + SA(n1 x); x + CA(n2 x, n_y y) with RoPE by each sequence's own positions; x + MLP(n3 x)."""
    torch.manual_seed(0)
    rope = RoPE2D(100.0)
    blk = perturb(DecoderBlock(16, 2, mlp_ratio=2.0, rope=rope))
    x, y = torch.randn(2, 6, 16), torch.randn(2, 12, 16)
    px, py = patch_positions(2, 3)[None], patch_positions(3, 4)[None]
    tx, ty = rope.tables(px, 8), rope.tables(py, 8)
    got = blk(x, y, tx, ty)

    def heads(t):
        return t.unflatten(-1, (2, 8)).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).flatten(-2)

    def rot(t, pos):  # RoPE2D of one (B, h, L, 8) tensor, written out: y rotates dims 0-3, x rotates dims 4-7
        out = t.clone()
        for half, coord in ((slice(0, 4), pos[..., 0]), (slice(4, 8), pos[..., 1])):
            v = t[..., half]
            freq = 1.0 / 100.0 ** (torch.arange(0, 4, 2).float() / 4)
            ang = coord[:, None, :, None].float() * freq  # (B, 1, L, 2)
            c, s = ang.cos(), ang.sin()
            v1, v2 = v[..., :2], v[..., 2:]
            out[..., half] = torch.cat([v1 * c - v2 * s, v2 * c + v1 * s], -1)
        return out

    a = blk.attn
    h = blk.norm1(x)
    q, k, v = (heads(t) for t in (h @ a.qkv.weight.T + a.qkv.bias).split(16, -1))
    ref = x + merge(attention_reference(rot(q, px), rot(k, px), v)) @ a.proj.weight.T + a.proj.bias
    c = blk.cross_attn
    hq, hy = blk.norm2(ref), blk.norm_y(y)
    q = heads(hq @ c.projq.weight.T + c.projq.bias)
    k, v = heads(hy @ c.projk.weight.T + c.projk.bias), heads(hy @ c.projv.weight.T + c.projv.bias)
    ref = ref + merge(attention_reference(rot(q, px), rot(k, py), v)) @ c.proj.weight.T + c.proj.bias
    ref = ref + blk.mlp(blk.norm3(ref))
    assert torch.allclose(got, ref, atol=1e-5)


def test_tied_decoders_and_heads_make_the_network_swap_equivariant(micro):
    """With dec_blocks2 = dec_blocks and head2 = head1 the two streams are one function applied symmetrically,
    so swapping the images swaps the outputs exactly; the trained asymmetric network has no such symmetry."""
    tied = PairwiseNet(micro.config)
    tied.load_state_dict(micro.state_dict())
    tied.dec_blocks2.load_state_dict(tied.dec_blocks.state_dict())
    tied.downstream_head2.load_state_dict(tied.downstream_head1.state_dict())
    a, b = _images(2), _images(2, seed=1)
    with torch.no_grad():
        ab, ba = tied.eval()(a, b), tied(b, a)
        uab, uba = micro(a, b), micro(b, a)
    assert torch.allclose(ab.pts1, ba.pts2_in_1, atol=1e-5) and torch.allclose(ab.conf2, ba.conf1, atol=1e-5)
    assert torch.allclose(ab.pts2_in_1, ba.pts1, atol=1e-5)
    assert (uab.pts1 - uba.pts2_in_1).abs().max() > 1e-3  # the real (untied) network is asymmetric


@pytest.mark.parametrize("batch_size", [1, 5])
def test_cached_encoder_matches_per_pair_encoding(micro, batch_size):
    images = _images(4)
    edges = make_pairs(4, "complete")
    cached = micro.infer_pairs(images, edges, batch_size=batch_size)
    reference = micro.infer_pairs(images, edges, batch_size=3, cache_encoder=False)
    assert cached.edges == edges and cached.pts_i.shape == (12, 32, 48, 3) and cached.conf_j.shape == (12, 32, 48)
    for got, ref in zip(cached[1:], reference[1:]):
        assert torch.allclose(got, ref, atol=1e-5)
    with torch.no_grad():  # each row is the pair's own forward pass
        i, j = edges[7]
        one = micro(images[i:i + 1], images[j:j + 1])
    assert torch.allclose(cached.pts_j[7], one.pts2_in_1[0], atol=1e-5)
    assert torch.allclose(cached.conf_i[7], one.conf1[0], atol=1e-5)


def test_portrait_views_run_in_their_real_orientation(micro):
    """DUSt3R's training setting (landscape_only, ManyAR_PatchEmbed) only stores portrait pictures transposed: the
    network runs on the real picture, so the outputs are those of the released setting, not f(I^T)^T."""
    config = PairwiseConfig(**{**MICRO, "landscape_only": True, "patch_embed_cls": "ManyAR_PatchEmbed"})
    model = PairwiseNet(config).eval()
    model.load_state_dict(micro.state_dict())
    a, b = _images(1, 48, 32), _images(1, 48, 32, seed=1)
    with torch.no_grad():
        got = model(a, b)
        real = micro(a, b)
        transposed = micro(a.transpose(-1, -2), b.transpose(-1, -2))
        mixed = model(a, _images(1, seed=2))  # a portrait and a landscape picture in one pair
    assert got.pts1.shape == (1, 48, 32, 3) and mixed.pts2_in_1.shape == (1, 32, 48, 3)
    for x, y in zip(got, real):
        assert torch.allclose(x, y, atol=1e-6)
    wrong = transposed.pts2_in_1.transpose(1, 2)
    assert (got.pts2_in_1 - wrong).abs().max() > 1e-2 * wrong.abs().max()
    pictures = torch.cat([a, b, _images(1, 48, 32, seed=3)])  # the cached-encoder path, all portrait
    cached = model.infer_pairs(pictures, [(0, 1), (2, 0)])
    assert torch.allclose(cached.pts_j[0], got.pts2_in_1[0], atol=1e-5)
    for x, y in zip(cached[1:], micro.infer_pairs(pictures, [(0, 1), (2, 0)])[1:]):
        assert torch.allclose(x, y, atol=1e-6)


def test_save_pretrained_round_trip_has_the_dust3r_layout(micro, tmp_path):
    micro.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["enc_embed_dim"] == 32 and config["dec_depth"] == 4 and config["head_type"] == "dpt"
    loaded = PairwiseNet.from_pretrained(tmp_path)  # strict: no missing or unexpected key
    keys = set(loaded.state_dict())
    for key in ("patch_embed.proj.weight", "enc_blocks.0.attn.qkv.weight", "enc_norm.weight", "decoder_embed.weight",
                "dec_blocks.3.cross_attn.projk.weight", "dec_blocks2.0.norm_y.bias", "dec_norm.weight",
                "downstream_head1.dpt.head.4.weight", "downstream_head2.dpt.scratch.refinenet4.out_conv.weight"):
        assert key in keys
    assert not any(k.startswith("encoder.") for k in keys)
    a, b = _images(1), _images(1, seed=3)
    with torch.no_grad():
        for x, y in zip(micro(a, b), loaded(a, b)):
            assert torch.equal(x, y)


def test_loads_dust3r_checkpoints_with_mask_token_and_without_second_decoder(micro, tmp_path):
    """DUSt3R files carry CroCo's unused mask_token; CroCo-initialised files lack dec_blocks2 (copied over)."""
    tensors, aliases = deduplicate(micro.state_dict())
    tensors = {k: v.contiguous() for k, v in tensors.items() if not k.startswith("dec_blocks2.")}
    tensors["mask_token"] = torch.zeros(1, 1, 16)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=aliases)
    (tmp_path / "config.json").write_text(json.dumps(micro.config.to_dict()))
    loaded = PairwiseNet.from_pretrained(tmp_path)
    for (k1, v1), (k2, v2) in zip(loaded.dec_blocks.state_dict().items(), loaded.dec_blocks2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_wrong_shapes_and_unknown_config_fields_are_clear(micro, tmp_path):
    micro.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "dec_embed_dim": 24, "dec_num_heads": 2}))
    mismatch = r"shape mismatch for dec_blocks.0.attn.proj.bias: checkpoint \(16,\) vs model \(24,\)"
    with pytest.raises(ManyviewError, match=mismatch):
        PairwiseNet.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "enc_widht": 3}))
    with pytest.raises(ManyviewError, match="unknown fields enc_widht"):
        PairwiseNet.from_pretrained(tmp_path)


# Counted from the architecture. The official AsymmetricCroCo3DStereo in the DUSt3R 512 DPT configuration has
# 571,171,208 parameters including CroCo's unused 768-d mask_token, i.e. 571,170,440 without it.
EXPECTED = {"dust3r_512_dpt": 571_170_440, "base": 571_170_440, "tiny": 6_953_672}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = PairwiseNet(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]


def test_matching_preset_shares_encoder_and_head_shapes_with_fast3r():
    with torch.device("meta"):
        fast3r, pairwise = Fast3R("tiny"), PairwiseNet(pairwise_config("tiny"))
    enc = {k: v.shape for k, v in fast3r.encoder.state_dict().items()}
    assert enc == {k: v.shape for k, v in pairwise.state_dict().items() if k.split(".")[0] in
                   ("patch_embed", "enc_blocks", "enc_norm")}
    head = {k: v.shape for k, v in fast3r.downstream_head.state_dict().items()}
    assert head == {k: v.shape for k, v in pairwise.downstream_head1.state_dict().items()}
    c = pairwise.config
    d = fast3r.config.decoder_args
    assert (c.dec_embed_dim, c.dec_depth, c.dec_num_heads) == (d.embed_dim, d.depth, d.num_heads)


def test_bad_inputs_and_configs(micro):
    with pytest.raises(ManyviewError, match="multiple of the patch size"):
        micro(_images(1, 30, 48), _images(1))
    with pytest.raises(ManyviewError, match="same number of pairs"):
        micro(_images(2), _images(1))
    with pytest.raises(ManyviewError, match="outside 0..3"):
        micro.infer_pairs(_images(4), [(0, 4)])
    with pytest.raises(ManyviewError, match="head dimension"):
        PairwiseConfig(**{**MICRO, "dec_embed_dim": 12, "dec_num_heads": 2})
    with pytest.raises(ManyviewError, match="only dpt/pts3d"):
        PairwiseConfig(head_type="linear")
    with pytest.raises(ManyviewError, match="unknown pairwise preset"):
        PairwiseNet("huge")
    assert math.isinf(PairwiseConfig().depth_mode[2])


def test_freeze_encoder_as_dust3r():
    model = PairwiseNet(PairwiseConfig(**{**MICRO, "freeze": "encoder"}))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("patch_embed.", "enc_blocks.")) for n in frozen)
    assert model.enc_norm.weight.requires_grad and model.decoder_embed.weight.requires_grad


def test_infer_pairs_reports_progress_through_the_callback_and_prints_nothing(micro, capsys, monkeypatch):
    monkeypatch.delenv("MANYVIEW_QUIET", raising=False)  # a progress bar of the model's own would now show
    calls = []
    micro.infer_pairs(_images(4), make_pairs(4, "complete"), batch_size=5, progress=lambda *a: calls.append(a))
    assert calls == [(5, 12), (10, 12), (12, 12)]
    out, err = capsys.readouterr()
    assert out == "" and err == ""
