"""Spawning gloo ranks for the sharded splat tests: one free port, the ranks run, each rank's result read back."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, world: int, out: Path, result_name: str = "rank{rank}.pt",
                weights_only: bool = True) -> list[dict]:
    """Run ``worker(rank, world, port, str(out))`` on ``world`` processes; each rank saves a dict to
    ``out / result_name.format(rank=rank)``, with an "error" key holding its traceback when it failed."""
    mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    results = [torch.load(out / result_name.format(rank=r), weights_only=weights_only) for r in range(world)]
    for r, res in enumerate(results):
        assert "error" not in res, f"world {world} rank {r} failed:\n{res['error']}"
    return results
