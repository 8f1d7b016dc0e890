"""3DGS densification: clone, split, prune, opacity reset, and the optimiser state that follows them."""

from __future__ import annotations

import math

import pytest
import torch

from manyview.splat import Gaussians, render
from manyview.splat.strategy import DensifyStrategy
from manyview.splat.types import RenderOutput


def _params(g: Gaussians):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in g.as_dict().items()}
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    return params, optimizers


def _prime(params, optimizers):
    """One optimiser step so that every parameter has Adam moments, with a recognisable value per row."""
    for k, p in params.items():
        p.grad = torch.ones_like(p) * torch.arange(1, p.shape[0] + 1).reshape(-1, *([1] * (p.dim() - 1)))
        optimizers[k].step()


def _out(grad_px: torch.Tensor, visible: torch.Tensor, h=10, w=20) -> RenderOutput:
    """A fake render whose projected means carry the given pixel gradient (C, P, 2)."""
    means2d = torch.zeros_like(grad_px, requires_grad=True)
    means2d.grad = grad_px
    radii = visible[..., None].float().expand(*visible.shape, 2)
    return RenderOutput(torch.zeros(grad_px.shape[0], 3, h, w), torch.zeros(1), torch.zeros(1), means2d, radii)


def _four():
    # 0: small, high gradient -> clone; 1: large, high gradient -> split; 2: low gradient; 3: transparent -> pruned
    means = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    log_scales = torch.log(torch.tensor([[0.005] * 3, [0.05, 0.2, 0.05], [0.005] * 3, [0.005] * 3]))
    quats = torch.tensor([[1.0, 0, 0, 0]] * 4)
    logits = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.001]))
    return Gaussians(means, log_scales, quats, logits, torch.rand(4, 1, 3), torch.rand(4, 3, 3))


def test_clone_split_prune_and_the_optimizer_rows():
    params, opts = _params(_four())
    _prime(params, opts)
    before = {k: p.detach().clone() for k, p in params.items()}
    strat = DensifyStrategy(refine_start_iter=0, refine_every=10, reset_every=1000)
    state = strat.initialize_state(4)
    grad = torch.zeros(1, 4, 2)
    grad[0, :2, 0] = 1e-3  # NDC gradient 1e-3 * W / 2 = 0.01 > 0.0002 for the first two
    grad[0, 2, 0] = 1e-7
    report = strat.step_post_backward(params, opts, state, step=10, out=_out(grad, torch.ones(1, 4, dtype=torch.bool)),
                                      generator=torch.Generator().manual_seed(0))
    assert report == {"cloned": 1, "split": 1, "pruned": 1, "reset": 0}
    # survivors: [0, 2] (kept, 3 pruned), clone of 0, two children of 1
    assert params["means"].shape == (5, 3)
    assert torch.equal(params["means"][0], params["means"][2])  # the clone sits on its original
    for k in ("quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(params[k], before[k][[0, 2, 0, 1, 1]]), k
    torch.testing.assert_close(params["log_scales"][3:], before["log_scales"][1].expand(2, 3) - math.log(1.6))
    offsets = params["means"][3:] - before["means"][1]
    assert (offsets.abs() < 3 * before["log_scales"][1].exp()).all()  # samples of the parent Gaussian
    assert not torch.equal(params["means"][3], params["means"][4])
    for k, p in params.items():
        opt = opts[k]
        assert opt.param_groups[0]["params"][0] is p
        m = opt.state[p]["exp_avg"]
        assert m.shape == p.shape
        assert (m[2:] == 0).all()  # new Gaussians start without momentum
        assert (m[0] > 0).all() and (m[1] > m[0]).all()  # old rows moved with their Gaussians (old 0 and 2)
    assert state["grad2d"].shape == (5,) and state["count"].sum() == 0
    # the optimiser keeps working on the edited parameters
    for k, p in params.items():
        p.grad = torch.ones_like(p)
        opts[k].step()


def test_statistics_average_over_visible_steps_and_skip_hidden_pairs():
    strat = DensifyStrategy()
    state = strat.initialize_state(3)
    grad = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [5.0, 5.0]], [[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    visible = torch.tensor([[True, True, False], [False, True, False]])
    params, opts = _params(_four().select(torch.arange(3)))
    strat.step_post_backward(params, opts, state, step=1, out=_out(grad, visible, h=10, w=20))
    # pixels -> NDC: x * W / 2 = 10, y * H / 2 = 5; times the 2 cameras of the batch
    assert state["count"].tolist() == [1, 2, 0]
    torch.testing.assert_close(state["grad2d"], torch.tensor([math.hypot(3 * 20, 4 * 10), 2 * 20.0, 0.0]))


def test_opacity_reset_and_large_gaussians_pruned_after_it():
    params, opts = _params(_four())
    _prime(params, opts)
    strat = DensifyStrategy(refine_start_iter=0, refine_every=100, reset_every=100, prune_scale3d=0.1)
    state = strat.initialize_state(4)
    out = _out(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool))
    strat.step_post_backward(params, opts, state, step=100, out=out)  # refine (prune 3), then reset
    assert torch.sigmoid(params["opacity_logits"]).max() <= 0.01 + 1e-6
    assert (opts["opacity_logits"].state[params["opacity_logits"]]["exp_avg"] == 0).all()
    n = params["means"].shape[0]
    strat.step_post_backward(params, opts, state, step=200, out=_out(torch.zeros(1, n, 2), torch.ones(1, n, dtype=torch.bool)),
                             scene_scale=1.0)
    # after the first reset, Gaussians larger than 0.1 x scene scale go too; the reset opacity (0.01) stays above
    # prune_opa, so only the large one (0.2) is removed
    assert params["means"].shape[0] == n - 1
    assert (params["log_scales"].exp().amax(-1) <= 0.1).all()


def test_no_opacity_reset_once_densification_has_stopped():
    """3DGS / gsplat reset opacities only while densifying; a reset near the end of a run cannot be recovered."""
    params, opts = _params(_four())
    _prime(params, opts)
    strat = DensifyStrategy(refine_start_iter=10_000, refine_stop_iter=300, reset_every=100)
    state = strat.initialize_state(4)
    before = params["opacity_logits"].detach().clone()
    for step in (300, 400, 27_000):
        report = strat.step_post_backward(params, opts, state, step=step,
                                          out=_out(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool)))
        assert report["reset"] == 0, step
    assert torch.equal(params["opacity_logits"], before)
    report = strat.step_post_backward(params, opts, state, step=200,
                                      out=_out(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool)))
    assert report["reset"] == 1


def test_short_runs_stretch_the_schedule_like_gsplat_steps_scaler():
    from manyview.splat.trainer import SplatTrainConfig

    default = DensifyStrategy()
    short = SplatTrainConfig(iterations=7000, scale_schedule=True).strategy()
    assert (short.refine_start_iter, short.refine_stop_iter, short.reset_every) == (116, 3500, 700)
    assert short.refine_every == default.refine_every and short.grow_grad2d == default.grow_grad2d
    assert SplatTrainConfig(iterations=7000).strategy() == default  # off: as given
    assert SplatTrainConfig(iterations=30_000, scale_schedule=True).strategy() == default


def test_requires_the_projected_mean_gradient():
    strat = DensifyStrategy()
    out = _out(torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    out.means2d.grad = None
    params, opts = _params(_four().select(torch.arange(2)))
    with pytest.raises(RuntimeError, match="step_pre_backward"):
        strat.step_post_backward(params, opts, strat.initialize_state(2), step=1, out=out)


def test_densifies_inside_a_cpu_training_loop(scene, cameras):
    g = scene(n=30, seed=3).to(torch.float32)
    cams = cameras(2).to(torch.float32)
    target = render(scene(n=30, seed=4).to(torch.float32), cams).rgb.detach()
    params, opts = _params(g)
    strat = DensifyStrategy(refine_start_iter=1, refine_every=3, reset_every=1000, grow_grad2d=1e-5)
    state = strat.initialize_state(len(g))
    grown = 0
    for step in range(1, 8):
        out = render(Gaussians.from_dict(params), cams, backend="cpu")
        strat.step_pre_backward(out)
        loss = (out.rgb - target).abs().mean()
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        grown += sum(strat.step_post_backward(params, opts, state, step, out, scene_scale=2.0).values())
        assert all(p.shape[0] == params["means"].shape[0] for p in params.values())
    assert grown > 0 and params["means"].shape[0] != len(g)
