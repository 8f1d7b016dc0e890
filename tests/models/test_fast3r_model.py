"""Fast3R network: configurations, shapes, index embedding, equivariance, chunking."""

import math

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.models.fast3r import (PRESETS, DecoderArgs, EncoderArgs, Fast3R, Fast3RConfig, HeadArgs,
                                     fast3r_config, image_index_positions)
from manyview.nn.embeddings import sincos_embedding_1d



@pytest.fixture(scope="module")
def tiny(perturb):
    torch.manual_seed(0)
    return perturb(Fast3R("tiny"))


@pytest.fixture(scope="module")
def micro(perturb):
    """The smallest valid configuration, for tests that run many views."""
    torch.manual_seed(0)
    config = Fast3RConfig(EncoderArgs(embed_dim=32, depth=1, num_heads=2),
                          DecoderArgs(enc_embed_dim=32, embed_dim=16, depth=4, num_heads=2),
                          HeadArgs(feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8]))
    return perturb(Fast3R(config))


def _images(B, N, H=32, W=48, seed=0):
    return torch.rand(B, N, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_tiny_shapes_and_dtypes(tiny):
    out = tiny.infer(_images(2, 3))
    assert out.pts3d_global.shape == (2, 3, 32, 48, 3) and out.pts3d_local.shape == (2, 3, 32, 48, 3)
    assert out.conf_global.shape == (2, 3, 32, 48) and out.conf_local.shape == (2, 3, 32, 48)
    for t in (out.pts3d_global, out.conf_global, out.pts3d_local, out.conf_local):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert (out.conf_global > 1).all() and (out.conf_local > 1).all()  # conf = 1 + exp(c)
    assert out.image_ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    single = tiny.infer(_images(1, 3)[0])  # (N, 3, H, W) accepted, batch dimension added
    assert single.pts3d_global.shape == (1, 3, 32, 48, 3)


# (total parameters, encoder, fusion transformer): counted from the architecture; the released ViT-L 512 model
# has ~648M (encoder ~303M, fusion ~303M, two DPT heads ~20.5M each).
EXPECTED = {"tiny": (4_965_320, 1_927_488, 1_214_592), "small": (53_124_552, 21_589_632, 21_442_176),
            "base": (429_345_416, 303_098_880, 85_843_200), "vit_large_512": (647_551_368, 303_098_880, 303_361_024)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_on_meta(name):
    with torch.device("meta"):
        model = Fast3R(name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(model), count(model.encoder), count(model.decoder)) == EXPECTED[name]
    cfg = model.config
    assert model.decoder.decoder_embed.weight.shape == (cfg.decoder_args.embed_dim, cfg.encoder_args.embed_dim)
    assert model.downstream_head.dpt.act_postprocess[0][0].weight.shape[1] == cfg.encoder_args.embed_dim


def test_released_config_matches_the_published_json():
    released = {
        "encoder_args": {"encoder_type": "croco", "img_size": 512, "patch_size": 16,
                         "patch_embed_cls": "PatchEmbedDust3R", "embed_dim": 1024, "num_heads": 16, "depth": 24,
                         "mlp_ratio": 4, "pos_embed": "RoPE100", "attn_implementation": "flash_attention"},
        "decoder_args": {"decoder_type": "fast3r", "random_image_idx_embedding": True, "enc_embed_dim": 1024,
                         "embed_dim": 1024, "num_heads": 16, "depth": 24, "mlp_ratio": 4.0, "qkv_bias": True,
                         "drop": 0.0, "attn_drop": 0.0, "attn_implementation": "flash_attention",
                         "attn_bias_for_inference_enabled": False},
        "head_args": {"head_type": "dpt", "output_mode": "pts3d", "landscape_only": False,
                      "depth_mode": ["exp", -math.inf, math.inf], "conf_mode": ["exp", 1, math.inf],
                      "patch_size": 16, "with_local_head": True},
    }
    assert fast3r_config("vit_large_512").to_dict() == released
    config = Fast3RConfig.from_dict(released)
    assert config.head_args.dpt_widths == (256, 128, [96, 192, 384, 768])  # released head widths when absent
    assert config.decoder_args.hooks == [0, 12, 18, 24]
    with torch.device("meta"):
        model = Fast3R(config)
    assert model.downstream_head.dpt.scratch.layer4_rn.weight.shape == (256, 768, 3, 3)
    assert model.downstream_head.dpt.head[2].weight.shape == (128, 128, 3, 3)


def test_config_unknown_and_invalid_fields():
    good = fast3r_config("tiny").to_dict()
    with pytest.raises(ManyviewError, match="unknown fields in decoder_args: rope_theta"):
        Fast3RConfig.from_dict({**good, "decoder_args": {**good["decoder_args"], "rope_theta": 1.0}}, path="c.json")
    with pytest.raises(ManyviewError, match=r"unknown keys \['freeze'\]"):
        Fast3RConfig.from_dict({**good, "freeze": "none"})
    with pytest.raises(ManyviewError, match="missing sections"):
        Fast3RConfig.from_dict({"encoder_args": good["encoder_args"]})
    with pytest.raises(ManyviewError, match="dino_v2"):
        Fast3RConfig.from_dict({**good, "encoder_args": {**good["encoder_args"], "encoder_type": "dino_v2"}})
    with pytest.raises(ManyviewError, match="enc_embed_dim"):
        Fast3RConfig.from_dict({**good, "decoder_args": {**good["decoder_args"], "enc_embed_dim": 7}})
    with pytest.raises(ManyviewError, match="unknown Fast3R preset"):
        Fast3R("huge")


def test_index_positions_sequential_random_and_interpolated():
    assert image_index_positions(2, 4).tolist() == [[0, 1, 2, 3]] * 2
    a, b = image_index_positions(3, 50, seed=7), image_index_positions(3, 50, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, image_index_positions(3, 50, seed=8))
    assert (a[:, 0] == 0).all() and ((a[:, 1:] >= 1) & (a[:, 1:] <= 999)).all()
    assert all(len(set(row.tolist())) == 50 for row in a) and (a == a.round()).all()
    # Beyond the 1000-slot table: fractional positions spanning [0, 999], exact integers at N = 1000.
    big = image_index_positions(1, 1500)[0]
    assert big[0] == 0 and math.isclose(big[-1].item(), 999.0) and (big.diff() > 0).all()
    assert torch.equal(image_index_positions(1, 1000)[0], torch.arange(1000, dtype=torch.float64))
    shuffled = image_index_positions(1, 1500, seed=0)[0]
    assert shuffled[0] == 0 and torch.equal(shuffled.sort().values, big)


def test_index_embedding_interpolates_the_table(tiny):
    D = tiny.config.decoder_args.embed_dim
    table = sincos_embedding_1d(torch.arange(1000), D).float()
    assert torch.equal(tiny.index_embedding(torch.arange(1000.0)[None])[0], table)
    # Position 2.5 lies between rows 2 and 3 on the same sinusoids: each channel is sin/cos of 2.5 w_k.
    half = sincos_embedding_1d(torch.tensor([2.5]), D)[0]
    omega = 1.0 / 10000 ** (torch.arange(D // 2, dtype=torch.float64) / (D / 2))
    assert torch.allclose(half, torch.cat([(2.5 * omega).sin(), (2.5 * omega).cos()]))


@pytest.mark.slow
def test_more_views_than_the_index_table(micro):
    images = _images(1, 1001, H=16, W=16)
    out = micro.infer(images, max_parallel_views_for_head=256)
    assert out.pts3d_global.shape == (1, 1001, 16, 16, 3) and torch.isfinite(out.pts3d_global).all()
    assert out.image_ids[0, -1].item() == pytest.approx(999.0) and len(out.image_ids[0].unique()) == 1001


def test_fusion_is_equivariant_to_view_order_given_the_indices(micro):
    images = _images(1, 4)
    ids = torch.tensor([[0.0, 17.0, 401.0, 90.0]])
    perm = torch.tensor([0, 3, 1, 2])
    out = micro.infer(images, image_ids=ids)
    out_p = micro.infer(images[:, perm], image_ids=ids[:, perm])
    for a, b in ((out.pts3d_global, out_p.pts3d_global), (out.conf_local, out_p.conf_local)):
        assert torch.allclose(a[:, perm], b, atol=1e-5, rtol=1e-5)
    # The index embedding matters: swapping indices without moving the views changes the result.
    out_swapped = micro.infer(images, image_ids=ids[:, perm])
    assert not torch.allclose(out_swapped.pts3d_global[:, 1:], out.pts3d_global[:, 1:], atol=1e-4)


def test_chunking_does_not_change_results(micro):
    images = _images(2, 5)
    ref = micro.infer(images)
    small = micro.infer(images, encoder_chunk_size=1, max_parallel_views_for_head=3)
    assert torch.allclose(ref.pts3d_global, small.pts3d_global, atol=1e-6)
    assert torch.allclose(ref.conf_local, small.conf_local, atol=1e-6)
    assert micro.encoder_chunk_size == 400 and micro.max_parallel_views_for_head == 25  # restored


def test_forward_views_with_mixed_sizes(micro):
    imgs = [_images(1, 1, 32, 48, seed=s)[:, 0] * 2 - 1 for s in range(3)] + [_images(1, 1, 48, 32, seed=3)[:, 0] * 2 - 1]
    with torch.no_grad():
        res = micro.forward_views([{"img": x} for x in imgs])
        same = micro.forward_views([{"img": x} for x in imgs[:3]])
        tensor_api = micro(torch.stack([(x + 1) / 2 for x in imgs[:3]], dim=1))
    assert [r["pts3d_in_other_view"].shape for r in res] == [(1, 32, 48, 3)] * 3 + [(1, 48, 32, 3)]
    assert res[3]["conf_local"].shape == (1, 48, 32)
    assert torch.allclose(torch.stack([r["pts3d_local"] for r in same], 1), tensor_api.pts3d_local, atol=1e-5)


def test_training_mode_draws_random_indices(micro):
    micro.train()
    try:
        torch.manual_seed(3)
        out = micro(_images(2, 3))
        ids = out.image_ids
        assert (ids[:, 0] == 0).all() and ((ids[:, 1:] >= 1) & (ids[:, 1:] <= 999)).all()
        out.pts3d_global.mean().backward()  # differentiable end to end
        assert micro.encoder.patch_embed.proj.weight.grad is not None
    finally:
        micro.zero_grad(set_to_none=True)
        micro.eval()


def test_bfloat16_autocast_inference_is_close(tiny):
    images = _images(1, 3)
    ref = tiny.infer(images)
    out = tiny.infer(images, dtype=torch.bfloat16)
    assert out.pts3d_global.dtype == torch.float32
    scale = ref.pts3d_global.abs().max()
    assert (out.pts3d_global - ref.pts3d_global).abs().max() < 0.1 * scale


def _training_layout(model):
    """The same weights under the training configuration (ManyAR_PatchEmbed, landscape_only)."""
    cfg = model.config.to_dict()
    cfg["encoder_args"]["patch_embed_cls"] = "ManyAR_PatchEmbed"
    cfg["head_args"]["landscape_only"] = True
    trained = Fast3R(Fast3RConfig.from_dict(cfg)).eval()
    trained.load_state_dict(model.state_dict())
    return trained


def test_portrait_views_run_in_their_real_orientation(micro):
    """Under landscape_only the official code runs every picture in its real orientation (it only stores portrait
    pictures transposed): the same function as the released configuration, not f(I^T)^T."""
    trained = _training_layout(micro)
    portrait = _images(2, 3, H=48, W=32, seed=2)
    got = trained.infer(portrait)
    real = micro.infer(portrait)
    transposed = micro.infer(portrait.transpose(-1, -2))  # what running the transposed picture gives
    assert got.pts3d_global.shape == (2, 3, 48, 32, 3)
    for a, b in ((got.pts3d_global, real.pts3d_global), (got.conf_local, real.conf_local)):
        assert torch.allclose(a, b, atol=1e-6)
    wrong = transposed.pts3d_global.transpose(2, 3)
    assert (got.pts3d_global - wrong).abs().max() > 1e-2 * wrong.abs().max()


def test_forward_views_takes_the_official_storage_of_portrait_samples(micro):
    """true_shape per sample: portrait pictures stored transposed to landscape, one view's batch mixing both
    orientations; outputs come back in the stored layout, each sample as if it ran on its own."""
    trained = _training_layout(micro)
    land = [_images(2, 1, seed=s)[:, 0] * 2 - 1 for s in range(3)]  # (2, 3, 32, 48)
    port = [_images(2, 1, H=48, W=32, seed=10 + s)[:, 0] * 2 - 1 for s in range(3)]  # (2, 3, 48, 32)
    # view 0 landscape; view 1 portrait in both samples; view 2 portrait in sample 0, landscape in sample 1
    real = [[land[0][b], port[1][b], port[2][b] if b == 0 else land[2][b]] for b in range(2)]
    stored = [torch.stack([x if x.shape[-1] >= x.shape[-2] else x.transpose(-1, -2) for x in
                           (real[0][v], real[1][v])]) for v in range(3)]
    true_shape = [torch.tensor([list(real[b][v].shape[-2:]) for b in range(2)]) for v in range(3)]
    with torch.no_grad():
        res = trained.forward_views([{"img": x, "true_shape": t} for x, t in zip(stored, true_shape)])
        for b in range(2):
            alone = micro.forward_views([{"img": x[None]} for x in real[b]], image_ids=torch.tensor([[0, 1, 2]]))
            for v in range(3):
                for key in ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local"):
                    ref = alone[v][key][0]
                    if tuple(true_shape[v][b].tolist()) != tuple(stored[v].shape[-2:]):
                        ref = ref.transpose(0, 1)  # stored transposed
                    assert res[v][key].shape[:3] == (2, 32, 48)
                    assert torch.allclose(res[v][key][b], ref, atol=1e-5), (b, v, key)
    # the released configuration reads the same layout the same way (the network is the same function)
    with torch.no_grad():
        same = micro.forward_views([{"img": x, "true_shape": t} for x, t in zip(stored, true_shape)])
    assert torch.allclose(same[2]["pts3d_local"], res[2]["pts3d_local"], atol=1e-6)
    with pytest.raises(ManyviewError, match="view 1: true_shape \\(40, 48\\) of sample 0 is neither"):
        micro.forward_views([{"img": stored[0]}, {"img": stored[1], "true_shape": torch.tensor([[40, 48], [32, 48]])}])
    with pytest.raises(ManyviewError, match="true_shape must be \\(B, 2\\)"):
        micro.forward_views([{"img": stored[0], "true_shape": torch.tensor([32, 48])}])


def test_bad_inputs(tiny):
    with pytest.raises(ManyviewError, match="multiple of the patch size"):
        tiny.infer(torch.rand(1, 2, 3, 30, 32))
    with pytest.raises(ManyviewError, match="image_ids must have shape"):
        tiny.infer(_images(1, 3), image_ids=torch.zeros(1, 2))
    with pytest.raises(ManyviewError, match="must be"):
        tiny(torch.rand(2, 3, 32, 32))


def test_chunk_sizes_are_call_arguments_not_module_state(micro):
    """infer(encoder_chunk_size=..., max_parallel_views_for_head=...) must not write them onto the module (two
    callers sharing a model would see each other's sizes); they still set the work per encoder / head pass."""
    passes = []

    def seen(module, args):  # the encoder takes images, a head a list of layers
        batch = args[0].shape[0] if torch.is_tensor(args[0]) else args[0][0].shape[0]
        passes.append((module, batch, micro.encoder_chunk_size, micro.max_parallel_views_for_head))

    hooks = [m.register_forward_pre_hook(seen) for m in (micro.encoder, micro.downstream_head)]
    try:
        micro.infer(_images(2, 5), encoder_chunk_size=4, max_parallel_views_for_head=6)
    finally:
        for h in hooks:
            h.remove()
    assert all((enc, head) == (400, 25) for _, _, enc, head in passes)  # the defaults, untouched during the call
    encoder_batches = [n for m, n, _, _ in passes if m is micro.encoder]
    head_batches = [n for m, n, _, _ in passes if m is micro.downstream_head]
    assert encoder_batches == [4, 4, 2] and head_batches == [6, 4]  # 2 views x B=2 per pass; 3 views x B=2 per pass
