"""Gaussians sharded across processes (DTensor, gloo) and render() on them, against the single-process path.

Two gloo processes are spawned once for the module (spawning is most of the cost); each runs every case and saves
what it computed, and the tests below compare that with the same computation in this one process: images within
1e-5, gradients of every parameter within 1e-4 relative, Adam steps equal. World size 1 runs in this process on
an in-memory store.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from splat_spawn import spawn_ranks

from manyview.errors import ManyviewError
from manyview.splat import Gaussians, RenderSettings, render
from manyview.splat.gaussians import PARAMETER_NAMES
from manyview.splat.render import get_backend


def _load_scenes():
    """This folder's conftest by path: the spawned workers import this module without pytest's conftest
    machinery, and two folders' ``conftest`` modules would share one name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_splat_test_scenes", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_scene, module.make_cameras


make_scene, make_cameras = _load_scenes()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WORLD = 2
BG = torch.tensor([0.2, 0.5, 0.9])


def _weights(shapes, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


def _linear_loss(out, weights, start=0, stop=None):
    """sum(rgb * w) + sum(alpha * w) + sum(depth * w) over cameras [start, stop) of the weights."""
    return sum((t * w[start:stop]).sum() for t, w in zip((out.rgb, out.alpha, out.depth), weights))


def _shapes(num_cameras, height, width):
    return [(num_cameras, 3, height, width), (num_cameras, height, width), (num_cameras, height, width)]


# Each case: scene size, seed, SH degree, cameras, image size, render options.
CASES = {
    "uneven": dict(n=47, seed=1, degree=2, cams=3, hw=(37, 53), kw=dict(mode="classic")),
    "one_camera_antialiased": dict(n=30, seed=2, degree=2, cams=1, hw=(30, 41),
                                   kw=dict(mode="antialiased", sh_degree=1)),
    "one_gaussian": dict(n=1, seed=3, degree=1, cams=2, hw=(20, 24), kw={}),  # shards of 1 and 0 Gaussians
    "no_gaussians": dict(n=0, seed=3, degree=1, cams=2, hw=(20, 24), kw={}),
    # Gaussians 20..26 (rank 1) sit exactly where 0..6 (rank 0) do, with other colours and opacities: equal
    # depths, so only compositing in global order across the ranks gives the single-process image
    "ties_across_ranks": dict(n=40, seed=5, degree=1, cams=2, hw=(30, 41), kw={}, ties=True),
}
SKEWED = {"empty_first": [0, 40], "empty_second": [40, 0], "skewed": [33, 7]}  # rows per rank, plain tensors


def _case_inputs(case):
    c = CASES[case]
    g = make_scene(n=max(c["n"], 1), seed=c["seed"], degree=c["degree"], dtype=torch.float32)
    g = g.select(torch.arange(c["n"]))
    if c.get("ties"):
        copy = lambda t: torch.cat([t[:20], t[:7], t[27:]])
        g = g.replace(means=copy(g.means), log_scales=copy(g.log_scales), quats=copy(g.quats))
    cams = make_cameras(c["cams"], *c["hw"], dtype=torch.float32)
    return g, cams, c["kw"], _weights(_shapes(c["cams"], *c["hw"]))


# ------------------------------------------------------------------------------------------------ workers
def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import numba

    numba.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    try:
        _run_cases(rank, results)
    except Exception:  # keep the traceback for the parent; the other rank would otherwise hang in a collective
        results["error"] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _run_cases(rank: int, results: dict) -> None:
    from torch.distributed.tensor import DTensor

    from manyview.splat.distributed_render import camera_block, exchange_stats, render_shard
    from manyview.splat.sharded import ShardedGaussians, filter_rows, gaussian_mesh, rebalance, wrap_rows

    mesh = gaussian_mesh()

    # render on DTensor-sharded Gaussians, images and every gradient
    for case in CASES:
        g, cams, kw, weights = _case_inputs(case)
        s = ShardedGaussians.distribute(g, mesh).requires_grad_()
        with exchange_stats() as stats:
            out = render(s, cams, background=BG, **kw)
            out.means2d.retain_grad()
            start, stop = camera_block(len(cams), WORLD, rank)
            loss = sum((t.to_local() * w[start:stop]).sum()
                       for t, w in zip((out.rgb, out.alpha, out.depth), weights))
            loss.backward()
        assert all(isinstance(t, DTensor) for t in (out.rgb, out.alpha, out.depth, out.means2d, out.radii))
        results[case] = {
            "rgb": out.rgb.full_tensor(), "alpha": out.alpha.full_tensor(), "depth": out.depth.full_tensor(),
            "radii": out.radii.full_tensor(), "means2d_grad": out.means2d.grad.full_tensor(),
            "grads": {n: getattr(s, n).grad.full_tensor() for n in PARAMETER_NAMES},
            "local_rows": len(s.local()), "stats": dict(stats),
        }

    # the same on plain per-rank tensors of any layout, empty shards included
    g, cams, _, weights = _case_inputs("uneven")
    settings = RenderSettings(sh_degree=2)
    for name, sizes in SKEWED.items():
        start = sum(sizes[:rank])
        local = g.select(torch.arange(start, start + sizes[rank])).clone().requires_grad_()
        out = render_shard(local, cams, BG.expand(3, 3), settings, get_backend("cpu"))
        c0, c1 = camera_block(len(cams), WORLD, rank)
        loss = sum((t * w[c0:c1]).sum() for t, w in zip((out.rgb, out.alpha, out.depth), weights))
        loss.backward()
        results[name] = {"rgb": out.rgb.detach(), "alpha": out.alpha.detach(), "depth": out.depth.detach(),
                         "grads": {n: getattr(local, n).grad for n in PARAMETER_NAMES}, "cameras": (c0, c1)}

    # float64 through the reference backend
    g64 = make_scene(n=21, seed=4, degree=1)
    cams64 = make_cameras(2, 18, 22)
    s = ShardedGaussians.distribute(g64, mesh).requires_grad_()
    out = render(s, cams64, backend="reference")
    loss = (out.rgb.to_local() ** 2).sum() + out.depth.to_local().sum()
    loss.backward()
    results["reference"] = {"rgb": out.rgb.full_tensor(), "depth": out.depth.full_tensor(),
                            "grads": {n: getattr(s, n).grad.full_tensor() for n in PARAMETER_NAMES}}

    # a loss written as DTensor operations over the whole batch: (rgb - target).abs().mean()
    g, cams, _, _ = _case_inputs("uneven")
    target = torch.rand(3, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    s = ShardedGaussians.distribute(g, mesh).requires_grad_()
    out = render(s, cams)
    c0, c1 = camera_block(3, WORLD, rank)
    loss = (out.rgb - wrap_rows(target[c0:c1], mesh, 3)).abs().mean()
    loss.backward()
    results["dtensor_loss"] = {"loss": loss.full_tensor(),
                               "grads": {n: getattr(s, n).grad.full_tensor() for n in PARAMETER_NAMES}}

    # the aggregate device: reductions, masks, Adam (its moments sharded alike), pruning
    params = {n: torch.nn.Parameter(t) for n, t in ShardedGaussians.distribute(g, mesh).as_dict().items()}
    s = ShardedGaussians.from_dict(params)
    opt = torch.optim.Adam(params.values(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        out = render(s, cams, background=BG)
        loss = (out.rgb - wrap_rows(target[c0:c1], mesh, 3)).abs().mean()
        loss.backward()
        opt.step()
    keep = s.opacities > 0.3
    pruned = s.select(keep)
    moments = filter_rows([opt.state[params["means"]]["exp_avg"], opt.state[params["means"]]["exp_avg_sq"]], keep)
    results["store"] = {
        "mean_opacity": s.opacities.mean().full_tensor(), "sum_means": s.means.sum(0).full_tensor(),
        "colors": s.colors.full_tensor(), "params": {n: p.detach().full_tensor() for n, p in params.items()},
        "pruned": {n: t.full_tensor() for n, t in pruned.detach().as_dict().items()},
        "pruned_local_rows": len(pruned.local()), "pruned_total": len(pruned),
        "moments": [m.full_tensor() for m in moments],
    }

    # layouts: rows of any count per rank are rebalanced into Shard(0) order-preserving; per-shard edits
    local = torch.arange(5.0)[:, None].repeat(1, 2) + 10 * rank if rank == 0 else torch.zeros(0, 2)
    (balanced,) = rebalance([local], mesh)
    grown = ShardedGaussians.distribute(g, mesh).per_shard(lambda x: Gaussians.cat([x, x.select(slice(0, 2))]))
    results["layout"] = {"balanced": balanced.full_tensor(), "balanced_local": balanced.to_local(),
                         "grown_means": grown.means.full_tensor(), "grown_local_rows": len(grown.local())}

    # every rank must render the same cameras with the same settings: a clear error naming the rank
    g, cams, _, _ = _case_inputs("uneven")
    s = ShardedGaussians.distribute(g, mesh)
    bad = cams
    if rank == 1:
        c2w = cams.c2w.clone()
        c2w[1, 0, 3] += 0.01
        bad = type(cams)(cams.fxfycxcy, c2w, cams.image_size)
    errors = []
    try:
        render(s, bad)
    except ManyviewError as e:
        errors.append(str(e))
    try:
        render(s, cams, sh_degree=2 if rank == 0 else 1)
    except ManyviewError as e:
        errors.append(str(e))
    results["errors"] = errors


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks computed (one spawn for the whole module)."""
    out = tmp_path_factory.mktemp("sharded")
    return spawn_ranks(_worker, WORLD, out)


# ------------------------------------------------------------------------------------------------ checks
def _single(g, cams, weights, **kw):
    g = g.clone().requires_grad_()
    out = render(g, cams, **kw)
    out.means2d.retain_grad()
    _linear_loss(out, weights).backward()
    return out, {n: getattr(g, n).grad for n in PARAMETER_NAMES}


def _assert_grads_close(grads, expected, tol=1e-4):
    for n in PARAMETER_NAMES:
        denom = expected[n].norm()
        err = (grads[n] - expected[n]).norm()
        assert err <= tol * denom or (denom == 0 and err == 0), (n, float(err), float(denom))


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_render_equals_single_process_render(ranks, case):
    g, cams, kw, weights = _case_inputs(case)
    ref, ref_grads = _single(g, cams, weights, background=BG, **kw)
    for r, res in enumerate(ranks):
        got = res[case]
        for key in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(got[key], getattr(ref, key).detach(), rtol=0, atol=1e-5, msg=f"{key} r{r}")
        # the same pairs are culled; extents agree to the last bit or two (the projection kernel's vector and
        # remainder loops round differently, and where a Gaussian falls between them depends on the shard)
        assert torch.equal(got["radii"] > 0, ref.radii > 0)
        torch.testing.assert_close(got["radii"], ref.radii, rtol=1e-6, atol=0)
        _assert_grads_close(got["grads"], ref_grads)
        torch.testing.assert_close(got["means2d_grad"], ref.means2d.grad, rtol=1e-4, atol=1e-7)
    if case == "uneven":  # 47 Gaussians: 24 + 23; the scene exercises culling, borders, huge and tiny ones
        assert [res[case]["local_rows"] for res in ranks] == [24, 23]
        assert 0.05 < ref.alpha.mean() < 0.999
        assert (ref.radii == 0).any() and (ref.radii > 0).any()
        visible = (ref.radii > 0).all(-1)  # (C, P): only visible pairs travel, 12 floats each, both ways
        assert sum(res[case]["stats"]["pairs_sent"] for res in ranks) == int(visible.sum())
        camera_rank = torch.tensor([0, 0, 1])[:, None]  # cameras 0, 1 are rasterised on rank 0, camera 2 on rank 1
        gaussian_rank = (torch.arange(47) >= 24).long()[None]
        crossing = int((visible & (camera_rank != gaussian_rank)).sum())
        assert 0 < crossing < int(visible.sum())
        for key in ("bytes_sent", "bytes_received"):
            assert sum(res[case]["stats"][key] for res in ranks) == 2 * crossing * 12 * 4
    if case == "one_gaussian":
        assert [res[case]["local_rows"] for res in ranks] == [1, 0]


@pytest.mark.parametrize("layout", list(SKEWED))
def test_sharded_render_on_any_layout_of_plain_shards(ranks, layout):
    g, cams, _, weights = _case_inputs("uneven")
    g = g.select(torch.arange(40))
    ref, ref_grads = _single(g, cams, weights, background=BG)
    sizes = SKEWED[layout]
    grads = {n: torch.cat([res[layout]["grads"][n] for res in ranks]) for n in PARAMETER_NAMES}
    _assert_grads_close(grads, ref_grads)
    for r, res in enumerate(ranks):
        c0, c1 = res[layout]["cameras"]
        for key in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(res[layout][key], getattr(ref, key)[c0:c1].detach(), rtol=0, atol=1e-5)
        assert res[layout]["grads"]["means"].shape[0] == sizes[r]


def test_sharded_reference_backend_float64(ranks):
    g, cams = make_scene(n=21, seed=4, degree=1), make_cameras(2, 18, 22)
    g = g.clone().requires_grad_()
    out = render(g, cams, backend="reference")
    ((out.rgb ** 2).sum() + out.depth.sum()).backward()
    for res in ranks:
        got = res["reference"]
        assert got["rgb"].dtype == torch.float64
        torch.testing.assert_close(got["rgb"], out.rgb.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(got["depth"], out.depth.detach(), rtol=0, atol=1e-10)
        _assert_grads_close(got["grads"], {n: getattr(g, n).grad for n in PARAMETER_NAMES}, tol=1e-10)


def test_dtensor_loss_over_the_batch_matches_single_process(ranks):
    g, cams, _, _ = _case_inputs("uneven")
    target = torch.rand(3, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    g = g.clone().requires_grad_()
    loss = (render(g, cams).rgb - target).abs().mean()
    loss.backward()
    for res in ranks:
        torch.testing.assert_close(res["dtensor_loss"]["loss"], loss.detach(), rtol=1e-6, atol=0)
        _assert_grads_close(res["dtensor_loss"]["grads"], {n: getattr(g, n).grad for n in PARAMETER_NAMES})


def test_reductions_masks_and_adam_run_across_ranks(ranks):
    g, cams, _, _ = _case_inputs("uneven")
    target = torch.rand(3, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    params = {n: torch.nn.Parameter(t.clone()) for n, t in g.as_dict().items()}
    opt = torch.optim.Adam(params.values(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        loss = (render(Gaussians.from_dict(params), cams, background=BG).rgb - target).abs().mean()
        loss.backward()
        opt.step()
    single = Gaussians.from_dict({n: p.detach() for n, p in params.items()})
    keep = single.opacities > 0.3
    assert 0 < int(keep.sum()) < len(single)
    for res in ranks:
        store = res["store"]
        for n in PARAMETER_NAMES:  # two Adam steps on the shards = two on the whole
            torch.testing.assert_close(store["params"][n], getattr(single, n), rtol=1e-5, atol=1e-6, msg=n)
        torch.testing.assert_close(store["mean_opacity"], single.opacities.mean(), rtol=1e-6, atol=0)
        torch.testing.assert_close(store["sum_means"], single.means.sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(store["colors"], single.colors, rtol=1e-6, atol=1e-7)
        for n in PARAMETER_NAMES:  # pruning keeps the survivors in order, rebalanced into valid shards
            torch.testing.assert_close(store["pruned"][n], getattr(single, n)[keep], rtol=1e-5, atol=1e-6)
        state = opt.state[params["means"]]
        torch.testing.assert_close(store["moments"][0], state["exp_avg"][keep], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(store["moments"][1], state["exp_avg_sq"][keep], rtol=1e-4, atol=1e-12)
    total = int(keep.sum())
    assert [res["store"]["pruned_total"] for res in ranks] == [total, total]
    assert [res["store"]["pruned_local_rows"] for res in ranks] == [(total + 1) // 2, total // 2]


def test_rows_are_rebalanced_in_order_and_per_shard_edits_apply(ranks):
    expected = torch.arange(5.0)[:, None].repeat(1, 2)  # rank 0 brought 5 rows, rank 1 none
    assert torch.equal(ranks[0]["layout"]["balanced"], expected)
    assert torch.equal(ranks[0]["layout"]["balanced_local"], expected[:3])
    assert torch.equal(ranks[1]["layout"]["balanced_local"], expected[3:])
    g, _, _, _ = _case_inputs("uneven")
    # each shard (24 and 23 Gaussians) appended copies of its first two: rank-major order, then rebalanced
    want = torch.cat([g.means[:24], g.means[:2], g.means[24:], g.means[24:26]])
    assert torch.equal(ranks[0]["layout"]["grown_means"], want)
    assert [res["layout"]["grown_local_rows"] for res in ranks] == [26, 25]


def test_ranks_that_disagree_get_an_error_naming_the_rank(ranks):
    for res in ranks:  # every rank raises (none is left waiting in a collective)
        poses, degree = res["errors"]
        assert "rank 1" in poses and "camera poses" in poses
        assert "rank 1" in degree and "render settings" in degree


# ------------------------------------------------------------------------------------------------ world size 1
@pytest.fixture
def world_of_one():
    """A process group of one in this process, destroyed afterwards (other tests expect none)."""
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in the test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from manyview.splat.sharded import gaussian_mesh

        yield gaussian_mesh()
    finally:
        dist.destroy_process_group()


def test_world_size_1_equals_the_plain_path(world_of_one):
    from manyview.splat.sharded import ShardedGaussians

    g, cams, kw, weights = _case_inputs("uneven")
    ref, ref_grads = _single(g, cams, weights, background=BG, **kw)
    s = ShardedGaussians.distribute(g, world_of_one).requires_grad_()
    out = render(s, cams, background=BG, **kw)
    out.means2d.retain_grad()
    loss = sum((t.to_local() * w).sum() for t, w in zip((out.rgb, out.alpha, out.depth), weights))
    loss.backward()
    for key in ("rgb", "alpha", "depth", "radii"):  # same kernels on the same pairs in the same order
        assert torch.equal(getattr(out, key).full_tensor(), getattr(ref, key)), key
    for n in PARAMETER_NAMES:
        assert torch.equal(getattr(s, n).grad.full_tensor(), ref_grads[n]), n
    assert torch.equal(out.means2d.grad.full_tensor(), ref.means2d.grad)


def test_world_size_1_adam_step_equals_the_plain_step(world_of_one):
    from manyview.splat.sharded import ShardedGaussians

    g, cams, _, weights = _case_inputs("uneven")
    plain = {n: torch.nn.Parameter(t.clone()) for n, t in g.as_dict().items()}
    sharded = {n: torch.nn.Parameter(t) for n, t in ShardedGaussians.distribute(g, world_of_one).as_dict().items()}
    for params in (plain, sharded):
        opt = torch.optim.Adam(params.values(), lr=0.01)
        out = render(Gaussians.from_dict(params) if params is plain else ShardedGaussians.from_dict(params), cams)
        rgb = out.rgb if params is plain else out.rgb.to_local()
        (rgb * weights[0]).sum().backward()
        opt.step()
    for n in PARAMETER_NAMES:
        assert torch.equal(sharded[n].detach().full_tensor(), plain[n].detach()), n


def test_sharded_gaussians_reject_a_layout_torch_would_misread(world_of_one):
    from torch.distributed.tensor import DTensor, Shard

    from manyview.splat.sharded import ShardedGaussians, chunk_sizes, wrap_rows

    for n in range(0, 12):
        for k in range(1, 5):
            torch_layout = [len(c) for c in torch.arange(n).chunk(k)] if n else []
            assert chunk_sizes(n, k) == torch_layout + [0] * (k - len(torch_layout)), (n, k)
    g, _, _, _ = _case_inputs("uneven")
    with pytest.raises(ValueError, match="Shard"):
        wrap_rows(g.means[:5], world_of_one, 7)
    s = ShardedGaussians.distribute(g, world_of_one)
    with pytest.raises(ValueError, match="DTensor"):
        ShardedGaussians(g.means, *list(s.as_dict().values())[1:])
    bad = DTensor.from_local(g.quats[:3], world_of_one, [Shard(0)], run_check=False)
    with pytest.raises(ValueError, match="quats"):
        s.replace(quats=bad)


def test_sharded_store_conversions_and_fused_backends(world_of_one):
    from manyview.splat.sharded import ShardedGaussians

    g, cams, _, _ = _case_inputs("uneven")
    s = ShardedGaussians.distribute(g, world_of_one)
    assert len(s) == 47 and s.sh_degree == 2 and s.shard_sizes == [47] and s.offset == 0
    s64 = s.to(dtype=torch.float64)
    assert isinstance(s64, ShardedGaussians) and s64.dtype == torch.float64
    assert torch.equal(s64.full().means, g.means.double())
    assert torch.equal(s.with_sh_degree(3).full().sh_rest, g.with_sh_degree(3).sh_rest)
    assert torch.equal(s.with_sh_degree(0).full().sh_rest, g.with_sh_degree(0).sh_rest)
    with pytest.raises(ManyviewError, match="gsplat.*cannot render sharded"):
        render(s, cams, backend="gsplat")


def test_sharded_gaussians_need_a_process_group():
    from manyview.splat.sharded import gaussian_mesh

    assert not dist.is_initialized()
    with pytest.raises(ManyviewError, match="torchrun"):
        gaussian_mesh()
