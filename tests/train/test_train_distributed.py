"""Two processes on gloo: DDP and FSDP2 (both reshard settings) train like one process with the same global
batch, a killed distributed run resumes exactly, and ``torchrun`` launches the trainer as documented."""

import os
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from manyview.train.config import OptimConfig, ParallelConfig, ScheduleConfig, TrainConfig
from manyview.train.logging import read_metrics
from manyview.train.toy import ToyConfig, ToyTask
from manyview.train.trainer import train

pytestmark = pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")

STEPS = 4


def _cfg(out_dir, **kw) -> TrainConfig:
    # grad_clip is small enough to clip every step, so the DTensor global norm is exercised, not just logged.
    base = TrainConfig(out_dir=Path(out_dir), steps=STEPS, batch_size=8, log_every=1, ckpt_every=2,
                       optim=OptimConfig(lr=3e-3, grad_clip=0.3), schedule=ScheduleConfig(warmup_steps=1),
                       seed=5, progress=False)
    return replace(base, **kw)


RUNS = {  # name -> (parallel, grad_accum)
    "ddp": (ParallelConfig(mode="ddp"), 1),
    "ddp_accum": (ParallelConfig(mode="ddp"), 2),
    "fsdp_zero3": (ParallelConfig(mode="fsdp", fsdp_reshard_after_forward=True), 1),
    "fsdp_zero2": (ParallelConfig(mode="fsdp", fsdp_reshard_after_forward=False), 2),
}


class _Crash(Exception):
    pass


class _CrashAtCall(ToyTask):
    def __init__(self, cfg, call):
        super().__init__(cfg)
        self.calls, self.call = 0, call

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.call:
            raise _Crash
        return super().loss(model, batch)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    warnings.filterwarnings("ignore", "FSDP2-wrapped module")
    torch.set_num_threads(1)
    # One group for all the runs below (train() joins an existing group): re-creating the default group on
    # the same port in one process can rendezvous with the previous group's leftovers. A timeout turns a
    # hang into an error.
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    root = Path(root)
    for name, (parallel, accum) in RUNS.items():
        train(_cfg(root / name, parallel=parallel, grad_accum=accum), ToyTask(ToyConfig()))
    # A killed FSDP run (dropout on, so per-rank RNG states matter), relaunched from its step-2 checkpoint.
    # Both ranks die at the same point, before step 4's forward, as when torchrun kills the whole job.
    fsdp, toy = ParallelConfig(mode="fsdp"), ToyConfig(dropout=0.1)
    train(_cfg(root / "dropout_full", parallel=fsdp), ToyTask(toy))
    try:
        train(_cfg(root / "dropout_resumed", parallel=fsdp), _CrashAtCall(toy, call=4))
        raise AssertionError("the run should have crashed")
    except _Crash:
        pass
    train(_cfg(root / "dropout_resumed", parallel=fsdp, resume=True), ToyTask(toy))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _column(out: Path, key: str) -> list[float]:
    return [float(r[key]) for r in read_metrics(out / "metrics.csv")]


def _spawn_runs(root: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_cfg(root / "single"), ToyTask(ToyConfig()))
    finally:
        torch.set_num_threads(n)


# One test for everything the spawned processes did: with pytest-xdist, separate tests could each pay for
# their own spawn.
@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_exactly(tmp_path):
    _spawn_runs(tmp_path)
    single = tmp_path / "single"
    ws = load_file(single / "checkpoints" / "step_000000004" / "model.safetensors")
    for name in RUNS:
        multi = tmp_path / name
        assert len(_column(multi, "loss")) == STEPS, name
        for key in ("loss", "grad_norm", "mae"):
            assert _column(multi, key) == pytest.approx(_column(single, key), rel=1e-5), (name, key)
        # Rank 0 gathered the full (unsharded) weights, and they are the single-process weights.
        wm = load_file(multi / "checkpoints" / "step_000000004" / "model.safetensors")
        assert ws.keys() == wm.keys(), name
        for k in ws:  # key part of qkv.bias: zero gradient, Adam amplifies rounding noise (see test_train_loop)
            if not k.endswith("qkv.bias"):
                torch.testing.assert_close(wm[k], ws[k], rtol=1e-4, atol=1e-6, msg=f"{name} {k}")

    full, resumed = tmp_path / "dropout_full", tmp_path / "dropout_resumed"
    assert sorted(os.listdir(resumed / "checkpoints")) == ["step_000000002", "step_000000004"]
    assert {p.name for p in (resumed / "checkpoints" / "step_000000002").iterdir()} == \
        {"model.safetensors", "optim.pt", "rank0.pt", "rank1.pt", "meta.json"}
    assert _column(resumed, "step") == [1, 2, 3, 4]
    assert _column(resumed, "loss") == pytest.approx(_column(full, "loss"), rel=1e-6)


@pytest.mark.slow
def test_torchrun_launch(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "manyview.train.toy", "--train.parallel.mode", "ddp", "--train.out-dir", str(out),
           "--train.steps", "3", "--train.batch-size", "4", "--train.log-every", "1", "--train.ckpt-every", "3",
           "--train.no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _column(out, "step") == [1, 2, 3]
    assert (out / "checkpoints" / "step_000000003" / "rank1.pt").is_file()
    assert (out / "final" / "config.json").is_file()
