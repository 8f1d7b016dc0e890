"""Efficient-LVSM KV cache: incremental encoding equals encoding all views at once."""

import pytest
import torch
from test_lvsm_models import scene, tiny

from manyview.errors import ManyviewError
from manyview.models.efficient_lvsm import InputViewCache
from manyview.nn.kv_cache import KVCache, concat_reference


def test_kv_store_equals_plain_concatenation_through_regrowth():
    g = torch.Generator().manual_seed(0)
    store = KVCache(n_layers=2)
    chunks = {0: [], 1: []}
    for n in (3, 1, 7, 2, 16, 5):
        for layer in (0, 1):
            k, v = torch.randn(2, 4, n, 8, generator=g), torch.randn(2, 4, n, 8, generator=g)
            store.append(layer, k, v)
            chunks[layer].append((k, v))
    assert len(store) == 34 and store.capacity >= 34
    for layer in (0, 1):
        k, v = concat_reference(chunks[layer])
        assert torch.equal(store.keys(layer), k) and torch.equal(store.values(layer), v)
    store.reserve(100)
    assert store.capacity == 100 and torch.equal(store.keys(1), concat_reference(chunks[1])[0])
    index = torch.tensor([5, 0, 33])
    picked = store.select_tokens(index)
    assert torch.equal(picked.values(0), concat_reference(chunks[0])[1][:, :, index])
    with pytest.raises(ValueError, match="cannot append"):
        store.append(0, torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 1, 8))


def test_cache_built_incrementally_equals_all_views_at_once():
    model = tiny("efficient-lvsm-tiny")
    images, cams = scene(v=8)
    inputs, targets = cams[:, :6], cams[:, 6:]
    with torch.no_grad():
        full = model.encode(images[:, :6], inputs)
        reference = model.render(images[:, :6], inputs, targets)  # no cache object: the plain forward
        one_by_one = model.encode(images[:, :1], inputs[:, :1])
        for i in range(1, 6):
            one_by_one.add(images[:, i], inputs[:, i])
        one_by_one.reserve(8)
        assert one_by_one.kv.capacity == 8 * 6
        grouped = model.encode(images[:, :2], inputs[:, :2]).add(images[:, 2:3], inputs[:, 2:3]).add(
            images[:, 3:6], inputs[:, 3:])
        for cache in (full, one_by_one, grouped):
            assert cache.n_views == 6
            for layer in range(model.config.n_layer):
                for a, b in zip(cache.layer_kv(layer), full.layer_kv(layer)):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
            torch.testing.assert_close(model.render(cache, targets), reference, atol=1e-5, rtol=0)
            torch.testing.assert_close(model.render(cache, targets, target_batch_size=1), reference, atol=1e-5,
                                       rtol=0)
    f, c = one_by_one.input_cameras()
    assert torch.equal(c, inputs.c2w) and torch.equal(f, inputs.fxfycxcy)
    assert one_by_one.layer_kv(0)[0].shape == (2, 4, 6 * 6, 16)  # (B, heads, views * tokens, head_dim)


def test_adding_a_view_changes_the_render_and_removing_it_restores_it():
    model = tiny("efficient-lvsm-tiny")
    images, cams = scene(v=5)
    targets = cams[:, 4:]
    with torch.no_grad():
        cache = model.encode(images[:, :3], cams[:, :3])
        before = model.render(cache, targets)
        cache.add(images[:, 3], cams[:, 3])
        after = model.render(cache, targets)
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(model.render(cache.remove(3), targets), before, atol=1e-5, rtol=0)
        keep = torch.tensor([0, 2, 3])
        torch.testing.assert_close(model.render(cache.remove(1), targets),
                                   model.render(images[:, keep], cams[:, keep], targets), atol=1e-5, rtol=0)
        assert cache.remove(0).remove(0).remove(0).remove(0).n_views == 0


def test_views_of_different_sizes_can_share_a_cache():
    model = tiny("efficient-lvsm-tiny")
    images, cams = scene(v=3)
    small = torch.nn.functional.interpolate(images[:, 1], size=(8, 16), mode="bilinear")
    with torch.no_grad():
        cache = model.encode(images[:, :1], cams[:, :1]).add(small, cams[:, 1].resized(8, 16))
        out = model.render(cache, cams[:, 2:])
    assert cache.tokens_per_view == [6, 2] and out.shape == (2, 1, 3, 16, 24)


def test_cache_misuse_raises_clear_errors():
    model, other = tiny("efficient-lvsm-tiny"), tiny("efficient-lvsm-tiny", seed=1)
    images, cams = scene(v=3)
    cache = model.encode(images[:, :2], cams[:, :2])
    with pytest.raises(ManyviewError, match="empty"):
        model.render(InputViewCache(model, 2), cams[:, 2:])
    with pytest.raises(ManyviewError, match="different model"):
        other.render(cache, cams[:, 2:])
    with pytest.raises(ManyviewError, match="holds 2 scenes"):
        cache.add(images[:1, 2], cams[:1, 2])
    with pytest.raises(ManyviewError, match="exactly one Cameras"):
        model.render(cache, cams[:, :2], cams[:, 2:])
    with pytest.raises(ManyviewError, match="scenes"):
        model.render(cache, cams[:1, 2:])
    with pytest.raises(ManyviewError, match="out of range"):
        cache.remove(2)
    with pytest.raises(ManyviewError, match="NaN or infinite"):
        cache.add(images[:, 2], cams[:, 2].with_poses(cams[:, 2].c2w * torch.nan))
    assert cache.n_views == 2  # failed adds leave the cache untouched
