import math

import pytest
import torch

from manyview.train.config import OptimConfig, ScheduleConfig
from manyview.train.schedule import lr_at
from manyview.train.toy import ToyConfig, ToyTransformer
from manyview.train.trainer import grad_norm_and_clip, make_optimizer, param_groups


def test_warmup_then_cosine_hits_known_values():
    cfg = ScheduleConfig(warmup_steps=4, min_lr=0.1, decay="cosine")
    # 13 updates: 0..3 warm up, 4..12 decay, progress (s - 4) / 8.
    assert [lr_at(s, 13, 1.0, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 13, 1.0, cfg) == pytest.approx(1.0)
    assert lr_at(6, 13, 1.0, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(8, 13, 1.0, cfg) == pytest.approx(0.55)  # halfway: mean of lr and min_lr
    assert lr_at(12, 13, 1.0, cfg) == pytest.approx(0.1)  # the last update uses min_lr exactly


def test_cosine_is_monotone_and_constant_stays_flat():
    cos = [lr_at(s, 50, 3e-4, ScheduleConfig(warmup_steps=5, min_lr=1e-5)) for s in range(50)]
    assert all(a < b for a, b in zip(cos[:4], cos[1:5]))
    assert all(a >= b for a, b in zip(cos[4:], cos[5:]))
    const = [lr_at(s, 50, 3e-4, ScheduleConfig(warmup_steps=5, decay="constant")) for s in range(5, 50)]
    assert const == [3e-4] * 45


def test_no_warmup_starts_at_full_lr_and_single_step_run_is_defined():
    assert lr_at(0, 10, 2.0, ScheduleConfig(warmup_steps=0, min_lr=0.0)) == 2.0
    assert lr_at(0, 1, 2.0, ScheduleConfig(warmup_steps=0, min_lr=0.5)) == 0.5


def test_weight_decay_skips_biases_and_norm_scales():
    model = ToyTransformer(ToyConfig())
    groups = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert "blocks.0.qkv.weight" in decay and "head.weight" in decay
    assert {"blocks.0.qkv.bias", "blocks.0.norm1.weight", "norm.bias", "head.bias"} <= no_decay
    assert all(p.ndim == 1 for p in groups[1]["params"])


def test_adamw_leaves_biases_undecayed():
    model = ToyTransformer(ToyConfig())
    opt = make_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decay can move a parameter
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, p in model.named_parameters() if p.ndim >= 2}


def test_grad_norm_matches_explicit_norm_and_clips_to_it():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    norm = grad_norm_and_clip(params, max_norm=None)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    grad_norm_and_clip(params, max_norm=0.5)
    clipped = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    assert clipped.item() == pytest.approx(0.5, rel=1e-5)
