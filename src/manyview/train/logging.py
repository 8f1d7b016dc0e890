"""The per-run metrics log: ``metrics.csv`` (and TensorBoard events when asked), written by rank 0.

Rows are appended one whole line at a time and flushed, so a crash loses at most the line being written. Any
rewrite (dropping rows past the checkpoint a run resumes from, widening the header for a new metric) replaces
the file atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open

BASE_COLUMNS = ["step", "loss", "lr", "grad_norm", "time"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as dicts of strings (empty cells for metrics a row did not have)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Append-only CSV with columns ``step, loss, lr, grad_norm, time`` then the task's metrics."""

    def __init__(self, out_dir: str | os.PathLike, keep_until_step: int, tensorboard: bool = False):
        """Open ``out_dir/metrics.csv``, keeping rows with ``step <= keep_until_step`` (0 for a fresh run)."""
        self.path = Path(out_dir) / "metrics.csv"
        self.columns: list[str] = []
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            try:
                rows = [r for r in read_metrics(self.path) if int(r["step"]) <= keep_until_step]
                with open(self.path, newline="") as f:
                    self.columns = next(csv.reader(f), [])
            except (KeyError, ValueError, csv.Error) as e:
                raise ManyviewError(f"existing metrics log is not readable ({e}); move it away", self.path) \
                    from None
        self._rewrite(self.columns, rows)
        self._file = open(self.path, "a", newline="")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ManyviewError("tensorboard=True needs the 'tensorboard' package (pip install tensorboard)") \
                    from None
            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=keep_until_step + 1)

    def _rewrite(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        if columns:
            writer = csv.DictWriter(buf, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        with atomic_open(self.path, "w", newline="") as f:
            f.write(buf.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; a metric never seen before widens the header (the file is rewritten once)."""
        new = [k for k in row if k not in self.columns]
        if new:
            self._file.close()
            old = read_metrics(self.path) if self.columns else []
            if not self.columns:
                new = BASE_COLUMNS + sorted(k for k in row if k not in BASE_COLUMNS)
            self.columns = self.columns + new
            self._rewrite(self.columns, old)
            self._file = open(self.path, "a", newline="")
        writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="")
        writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(v: Any) -> str:
    # repr round-trips floats exactly, so a CSV-based comparison of two runs is bit-for-bit.
    return repr(float(v)) if isinstance(v, float) else str(v)
