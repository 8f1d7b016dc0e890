"""A rank lost in the middle of ``manyview splat`` on two processes: the other stops with one line naming it and
the checkpoint kept, the output folder holds that checkpoint and nothing else (no PLY, no temporaries), and
``--resume`` continues with the losses of an uninterrupted run.

The fault is injected by ``splat_fault_rank.py`` (a wrapper of the command for the tests): rank 1 sends itself
SIGKILL in the middle of a step (under torchrun, whose agent then sends the survivor SIGTERM), or SIGSTOP while
its checkpoint is being written (plain processes, as on another machine: its connections stay open, so only
``--dist-timeout`` ends the wait). Both runs end within a bound instead of hanging: the subprocess calls below
time out otherwise (the default timeout would wait 120 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from splat_spawn import free_port

from manyview.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

FAULT = Path(__file__).with_name("splat_fault_rank.py")
SAVED, KILLED_AT, STOPPED_AT, END = 3, 5, 6, 8
OPTIONS = ["--iterations", str(END), "--checkpoint-every", str(SAVED), "--batch-size", "2", "--sh-degree", "1",
           "--max-width", "16", "--max-init-points", "300", "--densify.refine-start-iter", "1",
           "--densify.refine-every", "2", "--densify.grow-grad2d", "1e-4", "--no-scale-schedule"]
# what the checkpoint of step SAVED holds, and all the output folder may hold after the fault
KEPT = {"checkpoints", "checkpoints/step_000003", "checkpoints/step_000003/state.pt",
        "checkpoints/step_000003/sharded", "checkpoints/step_000003/sharded/.metadata",
        "checkpoints/step_000003/sharded/__0_0.distcp", "checkpoints/step_000003/sharded/__1_0.distcp"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "MANYVIEW_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _contents(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _kept(out: Path) -> str:
    return (f"kept: the checkpoint of step {SAVED} ({out / 'checkpoints' / 'step_000003'}), nothing written after "
            "it; continue with --resume, on any number of processes")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    assert main(["synth", "--kind", "object", "--views", "8", "--height", "24", "--width", "32",
                 "--out", str(root / "ds")]) == 0
    return root / "ds"


def _record_losses(monkeypatch, cls) -> dict[int, float]:
    losses: dict[int, float] = {}
    step = cls.train_step

    def recorded(self):
        info = step(self)
        losses[self.step] = info["loss"]
        return info

    monkeypatch.setattr(cls, "train_step", recorded)
    return losses


def test_a_rank_killed_mid_step_under_torchrun(dataset, tmp_path, monkeypatch):
    from manyview.splat import read_ply
    from manyview.splat.sharded_trainer import ShardedSplatTrainer
    from manyview.splat.trainer import SplatTrainer

    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(FAULT), "1", "loss", str(KILLED_AT), "KILL", "--",
                          "splat", str(dataset), "--out", str(out), *OPTIONS, "--dist-timeout", "4"],
                         env=_env(), capture_output=True, text=True, timeout=150)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("manyview:")]
    assert len(lines) == 1, run.stderr[-3000:]
    # the survivor learns it from the closed connection, or from torchrun's SIGTERM when that comes first
    assert re.fullmatch(re.escape(f"manyview: error: {out}: splat training on 2 processes stopped at step "
                                  f"{KILLED_AT}: rank 1 is gone (") + r"(connection closed|the launcher stopped the "
                        r"others with SIGTERM)" + re.escape(f"); {_kept(out)}"), lines[0]), lines[0]
    assert re.search(r"exitcode\s*: 2 ", run.stderr)  # torchrun's report: the survivor's own exit, not a signal
    assert _contents(out) == KEPT

    monkeypatch.setenv("MANYVIEW_QUIET", "1")
    resumed = _record_losses(monkeypatch, ShardedSplatTrainer)  # one process continues the sharded checkpoint
    assert main(["splat", str(dataset), "--out", str(out), *OPTIONS, "--resume"]) == 0
    uninterrupted = _record_losses(monkeypatch, SplatTrainer)
    assert main(["splat", str(dataset), "--out", str(tmp_path / "one"), *OPTIONS]) == 0
    assert sorted(resumed) == list(range(SAVED + 1, END + 1)) and sorted(uninterrupted) == list(range(1, END + 1))
    assert [resumed[s] for s in sorted(resumed)] == pytest.approx(
        [uninterrupted[s] for s in sorted(resumed)], rel=1e-5)
    got, expected = read_ply(out / "splat.ply"), read_ply(tmp_path / "one" / "splat.ply")
    assert len(got) == len(expected) != 300  # densified
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert getattr(got, name).sub(getattr(expected, name)).abs().max() <= 1e-5, name


def test_a_rank_that_stops_answering_while_its_checkpoint_is_written(dataset, tmp_path):
    out = tmp_path / "run"
    port = free_port()
    ranks = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, str(FAULT), "1", "save", str(STOPPED_AT), "STOP", "--",
                                       "splat", str(dataset), "--out", str(out), *OPTIONS, "--dist-timeout", "3"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _, err = ranks[0].communicate(timeout=150)
    finally:
        ranks[1].kill()  # stopped: only SIGKILL ends it
        ranks[1].communicate()
    assert ranks[0].returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("manyview:")]
    assert lines == [f"manyview: error: {out}: splat training on 2 processes stopped at step {STOPPED_AT}: rank 1 "
                     f"stopped answering (nothing within the 3 s timeout); {_kept(out)}"], err[-3000:]
    assert _contents(out) == KEPT  # the checkpoint of step 6, half written, was removed with its temporary name


def test_dist_timeout_must_be_positive(capsys):
    assert main(["splat", "nowhere", "--out", "nowhere_out", "--dist-timeout", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("manyview: error: --dist-timeout must be a positive number of "
                                               "seconds, got 0")
