"""Where the splat trainer runs: ``--device`` (one process) and the CUDA mesh under torchrun (NCCL).

Without a GPU (CI): ``--device cuda`` is one line naming --device, before the dataset is read or a process group
is joined; the trainer refuses a device it cannot use; ``auto`` takes a GPU only where gsplat renders; the reference
renderer (``--device cuda`` without gsplat, and every rank on GPUs) trains, its 2D means' gradient reaching the
densification, in one process and in a group of one alike. With a GPU (``pytest -m gpu``; skipped elsewhere):
steps on CUDA equal the same steps on the CPU (the staged reference backend on both, densification, exposure,
pose refinement and random backgrounds included), the sharded trainer on an NCCL group of one equals the one-process
CUDA trainer, checkpoints move between the CPU and CUDA both ways (safetensors and torch.distributed.checkpoint),
and ``manyview splat --device cuda --resume`` continues on the GPU a run that two gloo processes began.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from manyview.errors import ManyviewError
from manyview.scene import Views
from manyview.splat import DensifyStrategy
from manyview.splat.gaussians import PARAMETER_NAMES
from manyview.splat.trainer import SplatTrainConfig, SplatTrainer
from splat_scenes import training_scene

HAS_CUDA = torch.cuda.is_available()


def _config(**kw) -> SplatTrainConfig:
    """tests/splat/test_splat_sharded_train.py's runs (clones, splits, prunes and an opacity reset within 10 steps),
    on the staged reference backend, which renders on either device."""
    base = dict(iterations=100, sh_degree=1, sh_increase_every=4, max_init_points=200, checkpoint_every=0,
                backend="reference",
                densify=DensifyStrategy(refine_start_iter=3, refine_every=3, reset_every=7, refine_stop_iter=20,
                                        grow_grad2d=2e-5, grow_scale3d=0.05))
    return SplatTrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ without a GPU
@pytest.mark.parametrize("world_size", ["1", "2"])
def test_device_cuda_without_a_gpu_is_one_line_naming_the_option(tmp_path, monkeypatch, capsys, world_size):
    """One process, and under torchrun's environment: refused before the dataset is read or a group is joined."""
    from manyview.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    out = tmp_path / "run"
    assert main(["splat", str(tmp_path / "no_dataset_here"), "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cpu" in err and "cuda" in err and "no CUDA GPU" in err, err
    assert not out.exists() and not dist.is_initialized()


def test_the_trainer_refuses_a_device_it_cannot_use(tmp_path, monkeypatch):
    views, points = training_scene()
    views = views[:3]
    with pytest.raises(ManyviewError, match="unknown device"):
        SplatTrainer(views, tmp_path, _config(), points=points, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ManyviewError, match="no CUDA GPU"):
        SplatTrainer(views, tmp_path, _config(), points=points, device="cuda")
    trainer = SplatTrainer(views, tmp_path, _config(exposure=True, backend="auto"), points=points, device="auto")
    assert trainer.device == torch.device("cpu")
    assert _devices(trainer) == {torch.device("cpu")}


def test_auto_takes_a_gpu_only_where_gsplat_renders_one_process(monkeypatch):
    """The reference renderer, all a GPU has without gsplat (and all the sharded trainer has there), is dense: auto
    keeps such runs on the CPU, and cuda asks for them."""
    import manyview.splat.trainer as trainer_module
    from manyview.splat.trainer import training_device

    for fast in (False, True):
        monkeypatch.setattr(trainer_module, "gsplat_available", lambda fast=fast: fast)
        assert training_device("auto").type == ("cuda" if fast else "cpu")
        assert training_device("auto", backend="gsplat").type == ("cuda" if fast else "cpu")
        for backend in ("reference", "cpu"):
            assert training_device("auto", backend=backend) == torch.device("cpu")
        assert training_device("auto", sharded=True) == torch.device("cpu")
        assert training_device("cpu") == torch.device("cpu")


def test_the_reference_renderer_trains_in_one_process_and_in_a_group_of_one(tmp_path):
    """The renderer of --device cuda without gsplat, and each rank's on GPUs, here on the CPU: the float32 2D means
    it returns lie on the path to the image (it computes in float64), so densification reads their gradient; the
    sharded trainer on a gloo group of one takes the same steps."""
    from manyview.splat.sharded_trainer import ShardedSplatTrainer
    from manyview.synth import generate

    _, sample = generate(1, kind="object", num_views=4, height=16, width=16)
    views, points = Views(images=sample.images, cameras=sample.cameras, names=sample.names), sample.point_cloud()
    densify = DensifyStrategy(refine_start_iter=2, refine_every=3, refine_stop_iter=20, grow_grad2d=1e-6)
    config = _config(batch_size=2, max_init_points=60, test_every=0, densify=densify)
    one = _train(SplatTrainer(views, tmp_path / "one", config, points=points), 4)
    assert sum(i["cloned"] + i["split"] for i in one["infos"]) > 0  # the statistics reached the strategy at step 3
    mesh = _process_group("gloo")
    try:
        sharded = _train(ShardedSplatTrainer(views, tmp_path / "sharded", config, points=points, mesh=mesh), 4)
    finally:
        dist.destroy_process_group()
    _assert_same_run(sharded, one, tol=1e-5, view_tol=1e-5)


def _devices(trainer) -> set[torch.device]:
    """Where every tensor the trainer steps with lives (DTensors: their local blocks)."""
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    tensors = [*trainer.params.values(), trainer.views.images, trainer.views.cameras.c2w,
               trainer.views.cameras.fxfycxcy, trainer.center, *trainer.strategy_state.values()]
    tensors += [v for opt in trainer.optimizers.values() for s in opt.state.values() for k, v in s.items()
                if torch.is_tensor(v) and k != "step"]
    tensors += [p for params in trainer.view_params.values() for p in params]
    return {local(t).device for t in tensors}


# ------------------------------------------------------------------------------------------------ with a GPU
@pytest.fixture
def exact_cuda_float32():
    """float32 matrix products in full precision on the GPU (TF32 would round at 1e-3), as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _process_group(backend: str):
    """A process group of one in this process (as the CPU world-size-1 tests make one), and its 1-D mesh."""
    from manyview.splat.sharded import gaussian_mesh

    if dist.is_initialized():
        pytest.fail("a process group is already initialised in the test process")
    if backend == "nccl":
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return gaussian_mesh()


@pytest.fixture
def nccl_world_of_one(exact_cuda_float32):
    mesh = _process_group("nccl")
    try:
        yield mesh
    finally:
        dist.destroy_process_group()


# name: (config options, steps)
CASES = {
    "batch2_exposure_background": (dict(batch_size=2, exposure=True, random_background=True), 10),
    "batch3_pose": (dict(batch_size=3, pose_refine=True, lr_pose=2e-3, exposure=True), 8),
}


def _train(trainer, steps: int) -> dict:
    infos = [trainer.train_step() for _ in range(steps)]
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    return {"infos": infos, "params": {n: full(p.detach()).cpu() for n, p in trainer.params.items()},
            "view": {n: torch.stack([p.detach().cpu() for p in ps]) for n, ps in trainer.view_params.items()}}


def _assert_same_run(got: dict, expected: dict, tol: float, view_tol: float) -> None:
    for a, b in zip(got["infos"], expected["infos"], strict=True):
        assert {k: a[k] for k in ("cloned", "split", "pruned", "reset", "skipped")} == \
               {k: b[k] for k in ("cloned", "split", "pruned", "reset", "skipped")}
        assert a["loss"] == pytest.approx(b["loss"], rel=tol)
        assert a["psnr"] == pytest.approx(b["psnr"], rel=tol)
    for name, value in expected["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=tol,
                                   atol=tol * float(value.abs().max().clamp_min(1e-3)))
    for name, value in expected["view"].items():
        torch.testing.assert_close(got["view"][name], value, rtol=view_tol,
                                   atol=view_tol * float(value.abs().max().clamp_min(1e-3)))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("exact_cuda_float32")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_steps_on_cuda_equal_the_steps_on_the_cpu(tmp_path, case):
    """Float64 rendering on both; the float32 loss, its gradient and fused Adam round differently on the two
    devices, and Adam's normalised steps enlarge that where a gradient is near zero, hence 1e-4 (the split noise,
    view order and backgrounds are drawn on the CPU for both, so the densification is the same)."""
    options, steps = CASES[case]
    views, points = training_scene()
    cpu = SplatTrainer(views, tmp_path / "cpu", _config(**options), points=points, device="cpu")
    cuda = SplatTrainer(views, tmp_path / "cuda", _config(**options), points=points, device="cuda")
    assert cuda.device.type == "cuda" and _devices(cuda) == {cuda.device}
    expected, got = _train(cpu, steps), _train(cuda, steps)
    assert _devices(cuda) == {cuda.device}  # densification kept everything there
    assert sum(i["cloned"] + i["split"] for i in got["infos"]) > 0
    _assert_same_run(got, expected, tol=1e-4, view_tol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_the_sharded_trainer_on_nccl_equals_one_cuda_process(tmp_path, nccl_world_of_one, case):
    """World size 1 on NCCL: every collective of a step runs (all-gathers, all-to-alls, all-reduces) on CUDA
    tensors, and the result is the one-process trainer's on the same GPU (the tolerances of the two-process CPU
    test, tests/splat/test_splat_sharded_train.py)."""
    from manyview.splat.sharded_trainer import ShardedSplatTrainer

    options, steps = CASES[case]
    views, points = training_scene()
    one = SplatTrainer(views, tmp_path / "one", _config(**options), points=points, device="cuda")
    sharded = ShardedSplatTrainer(views, tmp_path / "sharded", _config(**options), points=points,
                                  mesh=nccl_world_of_one)
    assert nccl_world_of_one.device_type == "cuda" and dist.get_backend() == "nccl"
    assert sharded.device.type == "cuda" and _devices(sharded) == {sharded.device}
    expected, got = _train(one, steps), _train(sharded, steps)
    assert _devices(sharded) == {sharded.device}
    pose = "pose_refine" in options
    _assert_same_run(got, expected, tol=2e-4 if pose else 1e-5, view_tol=1e-4)
    result = sharded.evaluate(with_lpips=False)  # renders gathered over NCCL, the colour fit on the CPU
    assert result["psnr"] == pytest.approx(one.evaluate(with_lpips=False)["psnr"], rel=1e-4)


def _state(trainer) -> dict[str, torch.Tensor]:
    """Everything a checkpoint restores, on the CPU, as full tensors."""
    full = lambda t: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()  # noqa: E731
    out = {f"p.{n}": full(p) for n, p in trainer.params.items()}
    for name, opt in trainer.optimizers.items():
        for key, value in opt.state[trainer.params[name]].items():
            out[f"o.{name}.{key}"] = full(torch.as_tensor(value))
    for name, params in trainer.view_params.items():
        out[f"v.{name}"] = torch.stack([p.detach().cpu() for p in params])
        for i, (p, opt) in enumerate(zip(params, trainer.view_optimizers[name])):
            out.update({f"w.{name}.{i}.{k}": torch.as_tensor(v).cpu() for k, v in opt.state.get(p, {}).items()})
    # the densification statistics are per rank: compare them where there is one rank
    out.update({f"s.{k}": v.cpu() for k, v in trainer.strategy_state.items()})
    return out


def _assert_restored(trainer, saved: dict[str, torch.Tensor], device_type: str) -> None:
    state = _state(trainer)
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert {d.type for d in _devices(trainer)} == {device_type}
    for name, opt in trainer.optimizers.items():  # fused Adam keeps its step count beside the parameters
        step = opt.state[trainer.params[name]]["step"]
        assert step.device.type == device_type, name


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.usefixtures("exact_cuda_float32")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_one_process_checkpoints_move_between_cpu_and_cuda(tmp_path):
    views, points = training_scene()
    config = _config(batch_size=2, exposure=True, pose_refine=True, lr_pose=2e-3)
    cuda = SplatTrainer(views, tmp_path, config, points=points, device="cuda")
    _train(cuda, 4)
    cuda.save_checkpoint()
    saved = _state(cuda)
    cpu = SplatTrainer(views, tmp_path, config, points=points, device="cpu")
    assert cpu.load_checkpoint() == 4
    _assert_restored(cpu, saved, "cpu")
    after_cpu = _train(cpu, 2)
    cpu.save_checkpoint()
    saved = _state(cpu)
    back = SplatTrainer(views, tmp_path, config, points=points, device="cuda")
    assert back.load_checkpoint() == 6
    _assert_restored(back, saved, "cuda")
    _train(back, 1)  # steps on from a CPU checkpoint (fused Adam's step count moved to the GPU)
    _train(cuda, 2)  # the uninterrupted CUDA run meets the CPU detour within the cross-device tolerance
    _assert_same_run({"infos": [], "params": _state_params(cuda), "view": {}},
                     {"infos": [], "params": after_cpu["params"], "view": {}}, tol=1e-4, view_tol=1e-4)


def _state_params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in trainer.params.items()}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.usefixtures("exact_cuda_float32")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_sharded_checkpoints_move_between_nccl_and_gloo(tmp_path):
    """torch.distributed.checkpoint written by an NCCL rank (CUDA) resumes on a gloo rank (CPU), and back."""
    from manyview.splat.sharded_trainer import ShardedSplatTrainer

    views, points = training_scene()
    config = _config(batch_size=2, exposure=True)
    saved = {}
    for backend, steps in (("nccl", 4), ("gloo", 2), ("nccl", 1)):
        mesh = _process_group(backend)
        try:
            trainer = ShardedSplatTrainer(views, tmp_path, config, points=points, mesh=mesh)
            if saved:
                assert (tmp_path / "checkpoints" / f"step_{saved['step']:06d}" / "sharded" / ".metadata").is_file()
                assert trainer.load_checkpoint() == saved["step"]
                _assert_restored(trainer, saved["state"], mesh.device_type)
            _train(trainer, steps)
            trainer.save_checkpoint()
            saved = {"step": trainer.step, "state": _state(trainer)}
        finally:
            dist.destroy_process_group()
    assert saved["step"] == 7


def _transforms_dataset(root: Path) -> Path:
    """A synthetic object scene as a nerfstudio transforms.json dataset (read without pycolmap, which the GPU
    machines lack; no points: the Gaussians start random in the cameras' box)."""
    from PIL import Image

    from manyview.io.transforms_json import write_transforms_json
    from manyview.synth import generate

    _, sample = generate(0, kind="object", num_views=8, height=24, width=32)
    (root / "images").mkdir(parents=True)
    names = [f"images/{i:03d}.png" for i in range(len(sample.images))]
    for name, image in zip(names, sample.images):
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)
    return write_transforms_json(root / "transforms.json", sample.cameras, names)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_the_command_resumes_on_the_gpu_what_two_cpu_processes_began(tmp_path, monkeypatch, capsys):
    """``torchrun --nproc-per-node 2 -m manyview splat --device cpu`` (gloo) writes a torch.distributed.checkpoint
    run; ``manyview splat --device cuda --resume`` (one process: an NCCL group of one, the reference renderer on the
    GPU) continues it, and ends where the same continuation on the CPU ends."""
    pytest.importorskip("tyro")
    pytest.importorskip("plyfile")
    from manyview.cli.main import main
    from manyview.splat import read_ply

    monkeypatch.setenv("MANYVIEW_QUIET", "1")
    dataset = _transforms_dataset(tmp_path / "ds")
    options = ["--sh-degree", "1", "--max-width", "16", "--batch-size", "2", "--checkpoint-every", "0",
               "--backend", "reference", "--random-init-points", "300"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MANYVIEW_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    begun = tmp_path / "begun"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "manyview", "splat", str(dataset), "--out", str(begun), *options, "--iterations", "3",
                    "--device", "cpu"], check=True, env=env, timeout=300)
    assert (begun / "checkpoints" / "step_000003" / "sharded" / ".metadata").is_file()
    ends = {}
    for device in ("cpu", "cuda"):
        run = tmp_path / device
        shutil.copytree(begun / "checkpoints", run / "checkpoints")
        capsys.readouterr()
        assert main(["splat", str(dataset), "--out", str(run), *options, "--iterations", "6", "--resume",
                     "--device", device]) == 0
        out = capsys.readouterr().out
        assert "resumed from the checkpoint at step 3" in out
        assert ("(NCCL, one GPU each)" in out) == (device == "cuda"), out
        ends[device] = (json.loads((run / "eval.json").read_text()), read_ply(run / "splat.ply"))
    (cpu_eval, cpu_ply), (cuda_eval, cuda_ply) = ends["cpu"], ends["cuda"]
    assert cuda_eval["step"] == 6 and cuda_eval["resumed_from"] == 3 and len(cuda_ply) == cuda_eval["gaussians"]
    assert len(cuda_ply) == len(cpu_ply)
    assert cuda_eval["psnr"] == pytest.approx(cpu_eval["psnr"], abs=0.01)
    for name in PARAMETER_NAMES:
        torch.testing.assert_close(getattr(cuda_ply, name), getattr(cpu_ply, name), rtol=1e-4, atol=1e-4)
    assert not dist.is_initialized()
