"""Measuring a block of work: its peak memory (:class:`MemoryMeter`) and its wall time per stage (:class:`StageTimer`).

Used by the reconstruction pipelines (``Reconstruction.info``) and the benchmarks. Peak memory on CUDA comes from
``torch.cuda.max_memory_allocated``; on the CPU from the process's resident set (``ru_maxrss``, exact when the
block sets a new high-water mark of the process, else a 10 ms sampling of ``/proc/self/statm``). Measure in a fresh
process when the absolute peak matters. Stage times synchronise CUDA, so asynchronous kernels are counted.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time

import torch


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


class MemoryMeter:
    """Peak memory of a block: ``increase_bytes`` over the level at its start, ``peak_bytes`` absolute (see the
    module docstring for how each device is measured)."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.01):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.increase_bytes = 0
        self.peak_bytes = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_resident_set"

    def __enter__(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes() or _maxrss_bytes()
        self._maxrss0 = _maxrss_bytes()
        self._sampled = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is None:
                return
            self._sampled = max(self._sampled, rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            maxrss = _maxrss_bytes()
            self.peak_bytes = maxrss if maxrss > self._maxrss0 else max(self._sampled, _rss_bytes() or 0)
        self.increase_bytes = max(0, self.peak_bytes - self._start)

    def as_dict(self) -> dict:
        return {"increase_bytes": int(self.increase_bytes), "peak_bytes": int(self.peak_bytes), "kind": self.kind}


class StageTimer:
    """Wall time per named stage (synchronising CUDA so that asynchronous kernels are counted)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[name] = time.perf_counter() - t0


__all__ = ["MemoryMeter", "StageTimer"]
