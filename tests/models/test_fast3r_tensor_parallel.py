"""Fast3R split across two gloo processes by tensor parallelism equals the one-process pass.

Two processes are spawned once for the module (spawning is most of the cost); each runs every case below and saves
what it computed, and the tests compare that with the same computation in this process: pointmaps and confidences
of both heads within 1e-5 relative, on the tiny preset with random non-trivial weights (uneven DPT-head shares,
a batch of 2, mixed view sizes, portrait samples) and on the official parity fixture, and ``manyview reconstruct``
run in the two-process group writes (from rank 0 alone) what it writes in one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manyview.errors import ManyviewError
from manyview.models.fast3r import Fast3R, _preset

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "parity" / "fast3r_tiny"
WORLD = 2
TOL = 1e-5
KEYS = ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
slow = pytest.mark.slow  # the tests that read the spawned processes' results (one spawn, ~10 s of CPU per process)


def _perturbed_tiny() -> Fast3R:
    """The tiny preset (fusion 4 heads, encoder 3: its attention stays replicated on 2 processes) with this folder's
    non-trivial random weights; conftest is loaded by path because the spawned workers import this module bare."""
    spec = importlib.util.spec_from_file_location("_models_conftest", Path(__file__).with_name("conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    torch.manual_seed(0)
    return conftest._perturbed(Fast3R("tiny"), seed=3)


def _even_encoder() -> Fast3R:
    """A small model whose encoder heads split too (4 heads each side)."""
    spec = importlib.util.spec_from_file_location("_models_conftest", Path(__file__).with_name("conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    torch.manual_seed(1)
    return conftest._perturbed(Fast3R(_preset((64, 2, 4), (64, 3, 4), (16, 8, [16, 16, 32, 32]))), seed=4)


def _images(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _tensor_case(model: Fast3R, name: str) -> dict:
    """Per case, the four outputs (B, N, ...) of the tensor entry."""
    if name == "tiny_uneven_head_shares":  # head passes of 3 and 2 images: shares of 2 + 1 (padded) and 1 + 1
        out = model.infer(_images((1, 5, 3, 48, 64), 1), image_index_seed=3, max_parallel_views_for_head=3,
                          encoder_chunk_size=2)
    elif name == "tiny_batch_of_two":
        out = model.infer(_images((2, 3, 3, 32, 48), 2), image_index_seed=5)
    elif name == "even_encoder":
        out = model.infer(_images((1, 4, 3, 32, 32), 3))
    return {"pts3d_in_other_view": out.pts3d_global, "conf": out.conf_global, "pts3d_local": out.pts3d_local,
            "conf_local": out.conf_local}


def _views_case() -> list[dict]:
    """forward_views with a portrait view stored transposed in one sample, and two sizes of views."""
    gen = torch.Generator().manual_seed(6)
    imgs = [torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1, torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1,
            torch.rand(2, 3, 48, 64, generator=gen) * 2 - 1]
    shapes = [torch.tensor([[32, 48], [48, 32]]), torch.tensor([[32, 48], [32, 48]]), torch.tensor([[48, 64]] * 2)]
    return [{"img": i, "true_shape": s} for i, s in zip(imgs, shapes)]


def _parity_views(inputs) -> list[dict]:
    return [{"img": inputs[f"view{v}.img"], "true_shape": inputs[f"view{v}.true_shape"]} for v in range(3)]


# ------------------------------------------------------------------------------------------------ the seam
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world: int, port: int, out_dir: str, fn) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MANYVIEW_QUIET="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        results = fn(rank)
    except Exception:  # keep the traceback for the parent; the other rank would otherwise hang in a collective
        results = {"error": traceback.format_exc()}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_in_processes(fn, world: int, out_dir: Path) -> list[dict]:
    """``fn(rank) -> dict`` in ``world`` spawned processes that share one gloo group (torchrun's environment set,
    so code that reads it joins that group); -> each rank's dict. A failure on any rank fails here with its
    traceback."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(_process, args=(world, _free_port(), str(out_dir), fn), nprocs=world, join=True)
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, r in enumerate(results):
        if "error" in r:
            raise AssertionError(f"rank {rank} failed:\n{r['error']}")
    return results


# ---------------------------------------------------------------------------------------------- the cases
def _cases(rank: int) -> dict:
    from safetensors.torch import load_file

    from manyview.cli.reconstruct import Reconstruct
    from manyview.models.fast3r_parallel import fast3r_mesh, local_parameter_bytes, parallelize_fast3r
    from manyview.recon import posed_photos

    mesh = fast3r_mesh()
    results = {}
    for name, make in (("tiny", _perturbed_tiny), ("even_encoder", _even_encoder)):
        model = make()
        full = local_parameter_bytes(model)
        results[f"{name}.plan"] = parallelize_fast3r(model, mesh).as_dict()
        results[f"{name}.bytes"] = (full, local_parameter_bytes(model))
        cases = ("tiny_uneven_head_shares", "tiny_batch_of_two") if name == "tiny" else ("even_encoder",)
        for case in cases:
            results[case] = _tensor_case(model, case)
        if name == "tiny":
            with torch.no_grad():
                results["tiny_views"] = model.forward_views(_views_case(), image_index_seed=2)

    if FIXTURE.is_dir():
        model = Fast3R.from_pretrained(FIXTURE)
        parallelize_fast3r(model, mesh)
        inputs = load_file(FIXTURE / "inputs.safetensors")
        for case in ("random_idx", "sequential_idx"):
            with torch.no_grad():
                results[f"parity.{case}"] = model.forward_views(_parity_views(inputs),
                                                                image_ids=inputs[f"{case}.image_ids"])

    try:  # 3 fusion heads cannot be split over 2 processes
        parallelize_fast3r(Fast3R(_preset((32, 1, 2), (48, 3, 3), (8, 8, [8, 8, 8, 8]))), mesh)
    except ManyviewError as e:
        results["indivisible"] = str(e)

    # the command, in this group (it joins it as it joins torchrun's); count which ranks write
    written = []
    original = posed_photos.write_reconstruction
    posed_photos.write_reconstruction = lambda *a, **k: (written.append(rank), original(*a, **k))[1]
    try:
        Reconstruct(sample=True, max_views=4, out=Path(os.environ["TP_TEST_OUT"])).run()
    finally:
        posed_photos.write_reconstruction = original
    results["cli_writes"] = written
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks computed (one spawn for the whole module)."""
    root = tmp_path_factory.mktemp("fast3r_tp")
    os.environ["TP_TEST_OUT"] = str(root / "reconstruction")  # inherited by the spawned processes
    try:
        return run_in_processes(_cases, WORLD, root / "ranks"), root / "reconstruction"
    finally:
        del os.environ["TP_TEST_OUT"]


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _assert_outputs_close(got: dict, expected: dict, what: str) -> None:
    for key in KEYS:
        assert got[key].shape == expected[key].shape, (what, key)
        assert _rel(got[key], expected[key]) < TOL, (what, key, _rel(got[key], expected[key]))


# ---------------------------------------------------------------------------------------------- the tests
@slow
@pytest.mark.parametrize("case", ["tiny_uneven_head_shares", "tiny_batch_of_two", "even_encoder"])
def test_two_processes_equal_one_process(ranks, case):
    results, _ = ranks
    model = _perturbed_tiny() if case.startswith("tiny") else _even_encoder()
    expected = _tensor_case(model, case)
    for rank, r in enumerate(results):  # every rank returns the whole output
        _assert_outputs_close(r[case], expected, f"rank {rank} {case}")


@slow
def test_views_entry_with_portrait_samples_and_two_sizes(ranks):
    results, _ = ranks
    with torch.no_grad():
        expected = _perturbed_tiny().forward_views(_views_case(), image_index_seed=2)
    for rank, r in enumerate(results):
        for v, (got, exp) in enumerate(zip(r["tiny_views"], expected)):
            _assert_outputs_close(got, exp, f"rank {rank} view {v}")


@slow
def test_what_is_split_and_the_weights_each_process_holds(ranks):
    results, _ = ranks
    for r in results:
        assert r["tiny.plan"] == {"world_size": 2, "fusion_transformer": "heads and MLPs",
                                  "encoder": "MLPs (attention replicated: 3 heads on 2 processes)",
                                  "dpt_heads": "views"}
        assert r["even_encoder.plan"]["encoder"] == "heads and MLPs"
    # every block's linear weights are halved, and the biases of qkv and fc1; the biases added after the
    # row-wise all-reduce (proj, fc2), the norms and the rest are replicated
    model = _even_encoder()
    split = sum(p.numel() * 4 for n, p in model.named_parameters()
                if "blocks." in n and (".attn." in n or ".mlp." in n)
                and not n.endswith(("proj.bias", "fc2.bias")))
    full, local = results[0]["even_encoder.bytes"]
    assert full == sum(p.numel() * 4 for p in model.parameters())
    assert local == full - split // 2
    assert results[1]["even_encoder.bytes"] == (full, local)


@slow
@pytest.mark.skipif(not FIXTURE.is_dir(), reason="parity fixtures (../shared beside the checkout) not available")
@pytest.mark.parametrize("case", ["random_idx", "sequential_idx"])
def test_parity_fixture_split_equals_one_process_and_the_official_outputs(ranks, case):
    from safetensors.torch import load_file

    results, _ = ranks
    model = Fast3R.from_pretrained(FIXTURE)
    inputs, official = load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")
    with torch.no_grad():
        expected = model.forward_views(_parity_views(inputs), image_ids=inputs[f"{case}.image_ids"])
    for rank, r in enumerate(results):
        for v in range(3):
            _assert_outputs_close(r[f"parity.{case}"][v], expected[v], f"rank {rank} view {v}")
            for key in KEYS:
                assert _rel(r[f"parity.{case}"][v][key], official[f"{case}.view{v}.{key}"]) < 1e-4, (rank, v, key)


@slow
def test_indivisible_head_count_is_one_clear_error(ranks):
    results, _ = ranks
    for r in results:
        assert r["indivisible"] == ("the fusion transformer has 3 attention heads, which 2 processes cannot split "
                                    "evenly: run on a number of processes that divides it (1, 3)")


def test_fast3r_parallel_needs_a_process_group():
    from manyview.models.fast3r_parallel import fast3r_mesh

    if dist.is_initialized():
        pytest.skip("a process group exists in this process")
    with pytest.raises(ManyviewError, match="launch with torchrun"):
        fast3r_mesh()


@slow
def test_reconstruct_command_in_two_processes_writes_once_what_one_process_writes(ranks, tmp_path):
    from manyview.cli.reconstruct import Reconstruct
    from manyview.io.transforms_json import read_transforms_json

    results, split_out = ranks
    assert results[0]["cli_writes"] == [0] and results[1]["cli_writes"] == []
    single_out = tmp_path / "single"
    Reconstruct(sample=True, max_views=4, out=single_out).run()
    split, single = (json.loads((o / "summary.json").read_text()) for o in (split_out, single_out))
    assert split["tensor_parallel"]["world_size"] == 2 and "tensor_parallel" not in single
    assert split["views"] == single["views"] == 4 and split["names"] == single["names"]
    assert split["mean_confidence"] == pytest.approx(single["mean_confidence"], rel=TOL)
    assert split["ground_truth"] == pytest.approx(single["ground_truth"], abs=0.01)
    cams_split, cams_single = (read_transforms_json(o / "transforms.json").cameras for o in (split_out, single_out))
    torch.testing.assert_close(cams_split.c2w, cams_single.c2w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cams_split.fx, cams_single.fx, rtol=1e-4, atol=1e-4)


def test_reconstruct_refuses_what_cannot_split(monkeypatch, tmp_path):
    from manyview.cli.reconstruct import Reconstruct

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ManyviewError, match="run --model colmap in one process"):
        Reconstruct(sample=True, model="colmap", out=tmp_path / "a").run()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ManyviewError, match="WORLD_SIZE='two' is not an integer"):
        Reconstruct(sample=True, out=tmp_path / "b").run()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sharded_qkv_rows_hold_each_ranks_heads():
    """The regrouping alone, without processes: rank r's rows of the regrouped [q | k | v] weight are exactly the
    q, k and v rows of heads r*h/K .. (r+1)*h/K."""
    from manyview.models.fast3r_parallel import regroup_qkv_rows

    dim, heads, k = 8, 4, 2
    w = torch.arange(3 * dim * 2.0).reshape(3 * dim, 2)
    regrouped = regroup_qkv_rows(w, k)
    per_rank = regrouped.chunk(k)
    for r in range(k):
        rows = [part[r * dim // k: (r + 1) * dim // k] for part in w.chunk(3)]  # q_r, k_r, v_r
        assert torch.equal(per_rank[r], torch.cat(rows))
