"""Checkpoints of the sharded splat trainer (torch.distributed.checkpoint) across a change of world size, and the
streamed PLY: saved by 4 gloo processes (two of them without a view of the batch of 2) and resumed by 2, saved by 2
and resumed by 1, saved by one process (safetensors) and resumed by 2, the
following losses and Gaussians equal the uninterrupted single-process run's; the PLY written shard by shard has the
bytes of the single-process PLY of the same Gaussians, an empty shard included.
"""

from __future__ import annotations

import os
import shutil
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from splat_scenes import training_scene
from splat_spawn import spawn_ranks

from manyview.splat import DensifyStrategy
from manyview.splat.ply import write_ply
from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

SAVE_AT, END = 6, 11  # densification at 3, 6, 9; an opacity reset at 7: on both sides of the checkpoint


def _config() -> SplatTrainConfig:
    # per-view parameters of both kinds (colour transforms, pose corrections) travel in the checkpoint too
    return SplatTrainConfig(iterations=END, batch_size=2, exposure=True, pose_refine=True, lr_pose=2e-3,
                            sh_degree=1, sh_increase_every=4,
                            max_init_points=200, checkpoint_every=0,
                            densify=DensifyStrategy(refine_start_iter=2, refine_every=3, reset_every=7,
                                                    refine_stop_iter=20, grow_grad2d=2e-5, grow_scale3d=0.05))


CLI_OPTIONS = ["--batch-size", "2", "--sh-degree", "1", "--max-width", "16", "--checkpoint-every", "0",
               "--max-init-points", "300", "--densify.refine-start-iter", "1", "--densify.refine-every", "2",
               "--densify.grow-grad2d", "1e-4", "--no-scale-schedule"]
CLI_SAVE_AT, CLI_END = 3, 6


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    try:
        _run(rank, world, Path(root), results)
    except Exception:  # keep the traceback for the parent; the other rank would otherwise hang in a collective
        results["error"] = traceback.format_exc()
    torch.save(results, Path(root) / f"world{world}_rank{rank}.pt")
    dist.destroy_process_group()


def _rest(trainer) -> dict:
    losses = [trainer.train_step()["loss"] for _ in range(END - trainer.step)]
    return {"losses": losses, "params": {n: p.detach().full_tensor() for n, p in trainer.params.items()},
            "pose": trainer.pose.deltas.detach()}


def _run(rank: int, world: int, root: Path, results: dict) -> None:
    from manyview.errors import ManyviewError
    from manyview.splat.init import from_points
    from manyview.splat.ply_stream import write_ply_sharded
    from manyview.splat.sharded import ShardedGaussians
    from manyview.splat.sharded_trainer import ShardedSplatTrainer

    views, points = training_scene()
    if world == 4:  # four ranks train to SAVE_AT and save (the run resumed by two ranks below)
        ShardedSplatTrainer(views, root / "four", _config(), points=points).train(show_progress=False,
                                                                                  stop_at=SAVE_AT)
        return
    if world == 2:
        t = ShardedSplatTrainer(views, root / "four", _config(), points=points)
        results["from_four"] = {"step": t.load_checkpoint(), **_rest(t)}
        # a single-process checkpoint resumed by two ranks
        t = ShardedSplatTrainer(views, root / "single", _config(), points=points)
        results["from_one"] = {"step": t.load_checkpoint(), **_rest(t)}
        # two ranks train to SAVE_AT and save (the run resumed by one rank below)
        t = ShardedSplatTrainer(views, root / "two", _config(), points=points)
        t.train(show_progress=False, stop_at=SAVE_AT)
        # streamed PLYs: the trained Gaussians, and one Gaussian (rank 1's shard empty)
        write_ply_sharded(root / "two.ply", t.gaussians)
        results["ply_gaussians"] = t.gaussians.full()
        results["shown"] = t.shown_gaussians().full()  # the training photos' mean colour transform folded in
        results["mean_transform"] = t.exposure.mean_transform(t.train_ids)
        one = ShardedGaussians.distribute(from_points(points.subsample(1, 0), sh_degree=2), t.mesh)
        write_ply_sharded(root / "one.ply", one, rows_per_block=1)
        results["one_gaussian"] = one.full()
        # the command as torchrun starts it (its environment; the group already joined)
        from manyview.cli.main import main

        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MANYVIEW_QUIET="1")
        results["cli"] = main(["splat", str(root / "ds"), "--out", str(root / "cli_two"), *CLI_OPTIONS,
                               "--iterations", str(CLI_SAVE_AT)])
    else:
        t = ShardedSplatTrainer(views, root / "two", _config(), points=points)
        results["from_two"] = {"step": t.load_checkpoint(), **_rest(t)}
        damaged = root / "damaged"
        shutil.copytree(root / "two", damaged)
        step_dir = next((damaged / "checkpoints").iterdir())
        (step_dir / "sharded" / "__1_0.distcp").unlink()
        try:
            ShardedSplatTrainer(views, damaged, _config(), points=points).load_checkpoint()
            results["damaged"] = "no error"
        except ManyviewError as exc:
            results["damaged"] = str(exc)


def _spawn(world: int, root: Path) -> list[dict]:
    return spawn_ranks(_worker, world, root, f"world{world}_rank{{rank}}.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded_checkpoint")
    views, points = training_scene()
    full = SplatTrainer(views, root / "full", _config(), points=points)
    losses = [full.train_step()["loss"] for _ in range(END)]
    SplatTrainer(views, root / "single", _config(), points=points).train(show_progress=False, stop_at=SAVE_AT)
    from manyview.cli.main import main

    assert main(["synth", "--kind", "object", "--views", "8", "--height", "24", "--width", "32",
                 "--out", str(root / "ds")]) == 0
    _spawn(4, root)
    two = _spawn(2, root)
    one = _spawn(1, root)
    return {"root": root, "losses": losses, "params": {n: p.detach() for n, p in full.params.items()},
            "pose": full.pose.deltas.detach(), "two": two, "one": one}


def _assert_same_run(got: dict, runs: dict) -> None:
    assert got["step"] == SAVE_AT
    assert got["losses"] == pytest.approx(runs["losses"][SAVE_AT:], rel=1e-5)
    # 1e-4: the pose corrections' gradient is summed from the ranks' parts (see test_splat_sharded_train.py)
    for name, expected in runs["params"].items():
        assert got["params"][name].shape == expected.shape, name
        torch.testing.assert_close(got["params"][name], expected, rtol=1e-4,
                                   atol=1e-4 * float(expected.abs().max().clamp_min(1e-2)))
    assert float(runs["pose"].abs().max()) > 1e-3  # the corrections moved, and resumed from the checkpoint
    torch.testing.assert_close(got["pose"], runs["pose"], rtol=1e-4, atol=1e-4 * float(runs["pose"].abs().max()))


def test_saved_by_four_processes_resumed_by_two(runs):
    assert len(list((runs["root"] / "four" / "checkpoints" / f"step_{SAVE_AT:06d}" / "sharded").glob("*.distcp"))) == 4
    for rank in runs["two"]:
        _assert_same_run(rank["from_four"], runs)


def test_saved_by_two_processes_resumed_by_one(runs):
    assert sorted(p.name for p in (runs["root"] / "two" / "checkpoints" / f"step_{SAVE_AT:06d}" /
                                   "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    _assert_same_run(runs["one"][0]["from_two"], runs)


def test_saved_by_one_process_resumed_by_two(runs):
    for rank in runs["two"]:
        _assert_same_run(rank["from_one"], runs)


def test_a_damaged_checkpoint_is_named(runs):
    message = runs["one"][0]["damaged"]
    assert message.endswith("__1_0.distcp: this checkpoint is damaged: this file of the checkpoint is missing; start "
                            "over without --resume (or with a new --out)"), message


@pytest.mark.parametrize("name, key", [("two.ply", "ply_gaussians"), ("one.ply", "one_gaussian")])
def test_the_streamed_ply_is_the_single_process_ply(runs, tmp_path, name, key):
    write_ply(tmp_path / "expected.ply", runs["two"][0][key])
    assert (runs["root"] / name).read_bytes() == (tmp_path / "expected.ply").read_bytes()
    assert not [p for p in runs["root"].iterdir() if p.name.startswith(".")]  # no temporaries left


def test_the_written_colours_fold_the_mean_exposure_per_shard(runs):
    from manyview.splat.appearance import fold_into_colours

    rank0 = runs["two"][0]
    g = rank0["ply_gaussians"]
    dc, rest = fold_into_colours(g.sh_dc, g.sh_rest, rank0["mean_transform"])
    assert not torch.equal(dc, g.sh_dc)
    torch.testing.assert_close(rank0["shown"].sh_dc, dc, rtol=0, atol=0)
    torch.testing.assert_close(rank0["shown"].sh_rest, rest, rtol=0, atol=0)
    torch.testing.assert_close(rank0["shown"].means, g.means, rtol=0, atol=0)


def test_the_command_under_torchrun_resumed_by_one_process(runs, monkeypatch, capsys):
    """``manyview splat`` under torchrun's environment (2 ranks) writes a torch.distributed.checkpoint run; the
    same command with --resume and no launcher continues it in one process; the PLY matches the same two commands
    run in one process (the learning-rate schedule follows --iterations, so both stop and resume alike)."""
    from manyview.cli.main import main
    from manyview.splat import read_ply

    monkeypatch.setenv("MANYVIEW_QUIET", "1")
    root = runs["root"]
    assert [r["cli"] for r in runs["two"]] == [0, 0]
    two = root / "cli_two"
    assert (two / "checkpoints" / f"step_{CLI_SAVE_AT:06d}" / "sharded" / ".metadata").is_file()
    assert main(["splat", str(root / "ds"), "--out", str(two), *CLI_OPTIONS, "--iterations", str(CLI_END),
                 "--resume"]) == 0
    out = capsys.readouterr().out
    assert "on 1 process\n" in out and f"resumed from the checkpoint at step {CLI_SAVE_AT}" in out
    for iterations, more in ((CLI_SAVE_AT, []), (CLI_END, ["--resume"])):  # the same in one process throughout
        assert main(["splat", str(root / "ds"), "--out", str(root / "cli_one"), *CLI_OPTIONS,
                     "--iterations", str(iterations), *more]) == 0
    got, expected = read_ply(two / "splat.ply"), read_ply(root / "cli_one" / "splat.ply")
    assert len(got) == len(expected) != 300  # densified
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)
