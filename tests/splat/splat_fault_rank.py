"""One rank of ``manyview splat`` with a fault injected by the tests (tests/splat/test_splat_sharded_faults.py):

    python splat_fault_rank.py RANK WHERE STEP SIGNAL -- splat DATASET --out OUT ...

The process whose ``RANK`` environment variable is RANK sends itself SIGNAL (KILL: it dies; STOP: it hangs, its
connections open) at step STEP: ``loss`` in the middle of the step (after the render's exchange, before the
backward's), ``save`` inside that step's checkpoint, as its files are being written. Every other rank runs the
command unchanged. The fault lives here, not in the library.
"""

from __future__ import annotations

import os
import signal
import sys


def _inject(where: str, step: int, sig: int) -> None:
    if where == "loss":
        from manyview.splat.sharded_trainer import ShardedSplatTrainer

        loss = ShardedSplatTrainer.loss

        def faulty_loss(self, pred, gt):
            if self.step == step:
                os.kill(os.getpid(), sig)
            return loss(self, pred, gt)

        ShardedSplatTrainer.loss = faulty_loss
    elif where == "save":
        import torch.distributed.checkpoint as dcp

        save = dcp.save

        def faulty_save(state, checkpoint_id=None, **kwargs):
            if f"step_{step:06d}" in str(checkpoint_id):
                os.kill(os.getpid(), sig)
            return save(state, checkpoint_id=checkpoint_id, **kwargs)

        dcp.save = faulty_save
    else:
        raise SystemExit(f"unknown fault place {where!r}")


def main() -> int:
    rank, where, step, name = sys.argv[1:5]
    args = sys.argv[sys.argv.index("--") + 1:]
    if os.environ.get("RANK") == rank:
        _inject(where, int(step), getattr(signal, f"SIG{name}"))
    from manyview.cli.main import main as manyview

    return manyview(args)


if __name__ == "__main__":
    sys.exit(main())
