"""``batch_size`` views per splat training step: batch 1 is the single-view step, bitwise; a batch's gradient is the
mean of its views' gradients and its densification statistics count each view separately."""

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.metrics.image import psnr
from manyview.splat import DensifyStrategy
from manyview.splat.gaussians import Gaussians
from manyview.splat.render import render
from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

from splat_scenes import training_scene


@pytest.fixture(scope="module")
def scene():
    return training_scene()


def _config(**kw) -> SplatTrainConfig:
    base = dict(iterations=100, sh_degree=1, sh_increase_every=4, max_init_points=200, checkpoint_every=0,
                densify=DensifyStrategy(refine_start_iter=3, refine_every=3, reset_every=7, refine_stop_iter=20,
                                        grow_grad2d=2e-5))
    return SplatTrainConfig(**{**base, **kw})


def _reference_step(t: SplatTrainer) -> dict:
    """The single-view step as the trainer took it before batches: one view, render, loss, Adam, densify."""
    cfg = t.config
    t.step += 1
    step = t.step
    t.optimizers["means"].param_groups[0]["lr"] = cfg.lr_means_at(step, t.extent)
    i = t._next_view()
    background = t._background()
    degree = min(cfg.sh_degree, step // cfg.sh_increase_every)
    out = t._render(i, background, degree)
    t.strategy.step_pre_backward(out)
    gt = t.views.images[i].to(out.rgb)
    pred = t.exposure(out.rgb[0], i) if t.exposure is not None else out.rgb[0]
    loss = t.loss(pred, gt)
    optimizers = [*t.optimizers.values(), *(opts[i] for opts in t.view_optimizers.values())]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    t.strategy.step_post_backward(t.params, t.optimizers, t.strategy_state, step, out, scene_scale=t.extent,
                                  generator=t.generator, scene_center=t.center)
    with torch.no_grad():
        value = psnr(out.rgb[0].detach().clamp(0, 1), gt).item()
    return {"loss": loss.item(), "psnr": value}


@pytest.mark.parametrize("extra", [{}, {"exposure": True, "pose_refine": True, "random_background": True}])
def test_batch_one_is_the_single_view_step_bitwise(scene, tmp_path, extra):
    views, points = scene
    ours = SplatTrainer(views, tmp_path / "a", _config(**extra), points=points)
    ref = SplatTrainer(views, tmp_path / "b", _config(**extra), points=points)
    for _ in range(8):  # densification at 3 and 6, an opacity reset at 7
        info = ours.train_step()
        expected = _reference_step(ref)
        assert (info["loss"], info["psnr"]) == (expected["loss"], expected["psnr"])
    assert len(ours.params["means"]) != 200  # densification ran
    for name in ours.params:
        assert torch.equal(ours.params[name], ref.params[name]), name
    for name in ours.strategy_state:
        assert torch.equal(ours.strategy_state[name], ref.strategy_state[name]), name
    for name, params in ours.view_params.items():
        for a, b in zip(params, ref.view_params[name]):
            assert torch.equal(a, b), name


def _single_view_gradient(t: SplatTrainer, i: int, background, degree):
    """Gradients of every parameter (and the densification statistics) of view ``i``'s loss alone."""
    for p in [*t.params.values(), *(q for ps in t.view_params.values() for q in ps)]:
        p.grad = None
    out = t._render(i, background, degree)
    out.means2d.retain_grad()
    pred = t.exposure(out.rgb[0], i) if t.exposure is not None else out.rgb[0]
    t.loss(pred, t.views.images[i]).backward()
    state = t.strategy.initialize_state(len(t.params["means"]))
    from manyview.splat.strategy import accumulate_grad2d

    accumulate_grad2d(state, out.means2d.grad, out.radii, out.rgb.shape[-1], out.rgb.shape[-2], 1)
    grads = {n: p.grad.clone() for n, p in t.params.items()}
    grads.update({f"{n}.{i}": ps[i].grad.clone() for n, ps in t.view_params.items()})
    return grads, state


@pytest.mark.parametrize("extra", [{}, {"exposure": True, "pose_refine": True}])
def test_a_batch_of_two_averages_the_single_view_gradients(scene, tmp_path, extra):
    views, points = scene
    cfg = _config(batch_size=2, **extra)
    batch = SplatTrainer(views, tmp_path / "a", cfg, points=points)
    drawn = []
    next_view = batch._next_view
    batch._next_view = lambda: drawn.append(next_view()) or drawn[-1]
    batch.train_step()  # step 1: no densification, so the gradients stay on the parameters
    assert len(drawn) == 2 and drawn[0] != drawn[1]
    single = SplatTrainer(views, tmp_path / "b", cfg, points=points)
    background = torch.tensor(cfg.background)
    (ga, sa), (gb, sb) = (_single_view_gradient(single, i, background, 0) for i in drawn)
    for name, p in batch.params.items():
        expected = (ga[name] + gb[name]) / 2
        scale = expected.abs().max()  # zero for rotations of isotropic Gaussians and SH rest at degree 0
        assert scale > 0 or name in ("quats", "sh_rest"), name
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-5 * scale), name
    for name, params in batch.view_params.items():  # each view's parameters get half of its own gradient
        for i, g in ((drawn[0], ga), (drawn[1], gb)):
            torch.testing.assert_close(params[i].grad, g[f"{name}.{i}"] / 2, rtol=1e-4, atol=1e-8)
    # densification statistics: each view counted on its own (gsplat's packed=False); the norm scaled back by 2
    assert torch.equal(batch.strategy_state["count"], sa["count"] + sb["count"])
    assert batch.strategy_state["count"].max() == 2
    torch.testing.assert_close(batch.strategy_state["grad2d"], sa["grad2d"] + sb["grad2d"], rtol=1e-4, atol=1e-9)


def test_batches_train_and_densify(scene, tmp_path):
    """A batch larger than the training views (a view twice in a step, across an epoch's end) trains and
    densifies; the batched render of several cameras equals their single-camera renders."""
    views, points = scene
    t = SplatTrainer(views, tmp_path, _config(batch_size=9, exposure=True), points=points)
    drawn = []
    next_view = t._next_view
    t._next_view = lambda: drawn.append(next_view()) or drawn[-1]
    infos = [t.train_step() for _ in range(7)]
    assert not any(i["skipped"] for i in infos) and len(t.params["means"]) != 200
    batches = [drawn[k:k + 9] for k in range(0, len(drawn), 9)]
    assert len(t.train_ids) == 7 and all(len(set(b)) < 9 for b in batches)  # views twice in a batch
    for i in t.train_ids:  # a view's colour transform is stepped once a step it appears in, however often
        opt = t.view_optimizers["exposure"][i]
        assert int(opt.state[opt.param_groups[0]["params"][0]]["step"]) == sum(i in b for b in batches)
    g = Gaussians.from_dict({n: p.detach() for n, p in t.params.items()})
    together = render(g, views.cameras[torch.tensor([1, 3, 5])], backend="cpu").rgb
    for k, i in enumerate([1, 3, 5]):
        torch.testing.assert_close(together[k], render(g, views.cameras[i:i + 1], backend="cpu").rgb[0],
                                   rtol=0, atol=1e-6)
    with pytest.raises(ManyviewError, match="batch_size"):
        SplatTrainConfig(batch_size=0)
