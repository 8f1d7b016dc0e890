"""A lost process in sharded splat training: when a rank dies, or stops answering for the collective timeout,
mid-step, the others stop within that bound with one :class:`~manyview.errors.ManyviewError` naming it, the step
and the checkpoint kept (see :mod:`manyview.splat.sharded_trainer`, "A lost process").

The collective the survivors wait in fails (at once when the rank's connection closes, else at the timeout); each
survivor destroys the process group (so that ranks waiting on a survivor learn at once too) and answers a roll
call in the rendezvous store for a few seconds; the ranks that did not answer are the lost ones. Under torchrun
the launcher stops the survivors itself with SIGTERM within a fraction of a second; :func:`sigterm_raises` turns
that signal into the same error.

Under NCCL (ranks on GPUs) only the SIGTERM path and NCCL's remote-error message are handled, and neither has been
seen on hardware yet; NCCL's own watchdog may end a process whose collective times out before this code runs
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``), and then torchrun's report is all there is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch.distributed as dist

from manyview.errors import ManyviewError

if TYPE_CHECKING:
    from manyview.splat.sharded_trainer import ShardedSplatTrainer

ROLL_CALL_S = 5.0  # at most this long (and half the collective timeout) the survivors wait for each other's answer
_CLOSED = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
           "socket closed", "no route to host",
           "remote process exited")  # NCCL's ncclRemoteError: "remote process exited or there was a network error"
_TIMED_OUT = ("timed out", "timeout")
_roll_calls = 0  # failures handled in this process: each roll call uses its own keys


class Terminated(BaseException):
    """SIGTERM arrived (torchrun sends it to every process of a run when one of them fails). A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` mistakes it for an error of the code it interrupts; files
    being built are removed on the way out."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated` once (a second one is ignored:
    the way out must finish); the previous handler is restored at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _failure_kind(exc: BaseException) -> str | None:
    """"closed", "timeout" or "terminated" when ``exc`` (or what it wraps) says that another process was lost or
    did not answer in a collective; None for any other error."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Terminated):
            return "terminated"
        text = str(e).lower()
        if isinstance(e, (RuntimeError, dist.DistError, OSError)):
            if any(marker in text for marker in _CLOSED):
                return "closed"
            if any(marker in text for marker in _TIMED_OUT):
                return "timeout"
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's CheckpointException
        if isinstance(failures, dict):
            for value in failures.values():
                todo.extend(value if isinstance(value, tuple) else [getattr(value, "exc", value)])
        todo.extend([e.__cause__, e.__context__])
    return None


def _roll_call(rank: int, world: int, store, prefix: str, wait_s: float) -> list[int] | None:
    """The ranks that did not answer within ``wait_s`` (each survivor writes its key under ``prefix`` in the
    rendezvous store and waits for the others'), or None when the store is out of reach (it lived in a lost
    process). Repeating it is harmless."""
    try:
        store.set(f"{prefix}{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not store.check([f"{prefix}{r}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - any failure of the store means: unknown
        return None


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}"


@contextlib.contextmanager
def stops_cleanly(trainer: ShardedSplatTrainer) -> Iterator[None]:
    """Turn the loss of another process (a collective failing because a rank's connection closed or it did not
    answer in time, or the SIGTERM torchrun sends) into one ManyviewError naming the lost ranks when the survivors
    can learn them, the step, and the checkpoint kept. Any other error passes unchanged."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - re-raised below unless it is a lost process
        error = _stopped(trainer, exc)
        if error is None:
            raise
        raise error from None


def _stopped(trainer: ShardedSplatTrainer, exc: BaseException) -> ManyviewError | None:
    """The error for ``exc`` if it is a lost process, else None. torchrun's SIGTERM usually lands while this runs
    (a collective fails first, the signal follows), and :func:`sigterm_raises` raises it once: each stage below
    can be repeated, so the handling starts again where it was cut."""
    global _roll_calls
    if trainer.world_size == 1 and not isinstance(exc, Terminated):
        return None  # no other process to lose
    _roll_calls += 1
    state: dict = {"prefix": f"manyview/splat/lost/{_roll_calls}/"}
    kind = None
    for _ in range(3):
        try:
            kind = kind or _failure_kind(exc)
            if kind is None:
                return None
            return _lost_process(trainer, kind, state)
        except Terminated:
            kind = kind or "terminated"
    return ManyviewError(f"splat training on {trainer.world_size} processes stopped: another process is gone",
                         trainer.out_dir)


def _lost_process(trainer: ShardedSplatTrainer, kind: str, state: dict) -> ManyviewError:
    rank, world = trainer.rank, trainer.world_size
    timeout = trainer.collective_timeout
    if "store" not in state:
        state["store"] = None
        with contextlib.suppress(Exception):
            state["store"] = dist.distributed_c10d._get_default_store()
    # the group is of no further use: destroying it closes this rank's connections, so that a rank still waiting
    # on this one fails now instead of at its timeout (gloo; NCCL has its own watchdog)
    with contextlib.suppress(Exception):
        if dist.is_initialized() and dist.get_backend() == "gloo":
            dist.destroy_process_group()
    wait = ROLL_CALL_S if timeout is None else min(ROLL_CALL_S, timeout / 2)
    if "lost" not in state:
        lost = None if state["store"] is None else _roll_call(rank, world, state["store"], state["prefix"], wait)
        state["lost"] = lost
    lost = state["lost"]
    limit = f"the {timeout:g} s timeout" if timeout else "the collectives' timeout"
    if lost:
        verb = "is" if len(lost) == 1 else "are"
        what = {"closed": f"{_ranks(lost)} {verb} gone (connection closed)",
                "timeout": f"{_ranks(lost)} stopped answering (nothing within {limit})",
                "terminated": f"{_ranks(lost)} {verb} gone (the launcher stopped the others with SIGTERM)"}[kind]
    else:
        what = {"closed": "another process is gone (connection closed; which one could not be learned)",
                "timeout": f"another process stopped answering (nothing within {limit}; which one could not be "
                           "learned)",
                "terminated": "stopped by SIGTERM (torchrun sends it to every process when one fails or is "
                              "stopped)"}[kind]
    where = f"at step {trainer.step}" if trainer.step else "before its first step"
    found = trainer.checkpoint_dirs()
    if found:
        kept = (f"kept: the checkpoint of step {int(found[-1].name.split('_')[-1])} ({found[-1]}), nothing "
                "written after it; continue with --resume, on any number of processes")
    else:
        kept = "no checkpoint had been written yet; nothing was written"
    return ManyviewError(f"splat training on {world} processes stopped {where}: {what}; {kept}", trainer.out_dir)


__all__ = ["ROLL_CALL_S", "Terminated", "sigterm_raises", "stops_cleanly"]
