"""A 3DGS PLY read in place: :class:`MappedGaussians` maps windows of its vertex block instead of loading it.

A binary little-endian 3DGS PLY whose properties are all float32 (every 3DGS exporter writes it so) stores its
Gaussians as one (P, n_properties) float32 matrix after the header, in whatever property order the header lists.
The store parses the header, checks the properties as :func:`manyview.splat.ply.read_ply` does, and hands out
rows ``start:stop`` through a ``np.memmap`` of just that window, unmapped again when the caller drops it: the
process's resident set holds the window, never the file (a mapping of the whole file would keep every page it
touched resident, counted against the process, until it is closed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.splat.gaussians import Gaussians
from manyview.splat.ply import sh_degree_of
from manyview.splat.sh import num_coefficients

# Longer headers than this are not a 3DGS PLY (one has ~70 short lines).
MAX_HEADER_BYTES = 1 << 16
_FLOAT32 = ("float", "float32")


@dataclass(frozen=True)
class _Header:
    offset: int  # bytes before the vertex block
    count: int
    names: tuple[str, ...]


def _parse_header(path: str) -> _Header:
    try:
        with open(path, "rb") as f:
            head = f.read(MAX_HEADER_BYTES)
    except FileNotFoundError:
        raise ManyviewError("file not found", path) from None
    except OSError as e:
        raise ManyviewError(f"cannot read ({e.strerror})", path) from None
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply\n") or end < 0:
        raise ManyviewError("not a binary PLY file (no 'ply' ... 'end_header' header)", path)
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    offset = end + len(b"end_header\n")
    fmt, count, names, element = None, None, [], None
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
        elif words[0] == "element":
            if element == "vertex":
                break  # elements after the vertex block do not move it
            element = words[1] if len(words) > 1 else ""
            if element != "vertex":
                raise ManyviewError(f"element {element!r} comes before 'vertex'; a 3DGS PLY has only 'vertex'", path)
            try:
                count = int(words[2])
            except (IndexError, ValueError):
                raise ManyviewError(f"malformed element line {line!r}", path) from None
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list":
                raise ManyviewError(f"vertex property {words[-1]} is a list; a 3DGS PLY has none", path)
            if words[1] not in _FLOAT32:
                raise ManyviewError(f"vertex property {words[-1]} is {words[1]}; reading a PLY in place needs float32 "
                                    "properties (read_ply converts others)", path)
            names.append(words[2])
    if fmt != "binary_little_endian":
        raise ManyviewError(f"format {fmt}; reading a PLY in place needs binary_little_endian (read_ply reads "
                            "the others)", path)
    if count is None:
        raise ManyviewError("no 'vertex' element, so this is not a 3DGS PLY", path)
    need = offset + count * 4 * len(names)
    size = os.path.getsize(path)
    if size < need:
        raise ManyviewError(f"truncated: the header announces {count} vertices ({need} bytes), the file has {size}",
                            path)
    return _Header(offset, count, tuple(names))


class MappedGaussians:
    """The Gaussians of a 3DGS PLY, read window by window (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        header = _parse_header(self.path)
        self.offset, self.names = header.offset, header.names
        self._count = header.count
        self.sh_degree = sh_degree_of(list(self.names), self.path)
        index = {name: i for i, name in enumerate(self.names)}
        cols = lambda names: np.array([index[n] for n in names], dtype=np.intp)
        k1 = num_coefficients(self.sh_degree) - 1
        self.means_columns = cols(["x", "y", "z"])
        self.quat_columns = cols([f"rot_{i}" for i in range(4)])
        self.scale_columns = cols([f"scale_{i}" for i in range(3)])
        self.opacity_column = index["opacity"]
        self.dc_columns = cols([f"f_dc_{i}" for i in range(3)])
        # (K - 1, 3) coefficient-major as Gaussians.sh_rest holds them; the file is channel-major (f_rest_{c (K-1) + k})
        self.rest_columns = cols([f"f_rest_{c * k1 + k}" for k in range(k1) for c in range(3)]).reshape(k1, 3)

    def __len__(self) -> int:
        return self._count

    @property
    def row_bytes(self) -> int:
        return 4 * len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of the vertex block."""
        return self._count * self.row_bytes

    def window(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a read-only (n, n_properties) float32 memmap of just those bytes."""
        n = max(0, min(stop, self._count) - start)
        if n == 0:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        return np.memmap(self.path, dtype="<f4", mode="r", offset=self.offset + start * self.row_bytes,
                         shape=(n, len(self.names)))

    def check_finite(self, values: np.ndarray, columns: np.ndarray, first_row: int) -> None:
        """ManyviewError naming the property and vertex of the first NaN or infinite value in ``values`` (its
        columns are the file's ``columns``, its first row the file's ``first_row``), as read_ply reports it."""
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim > 1 else (int(np.argmax(bad)), 0)
            name = self.names[int(np.atleast_1d(columns).reshape(-1)[col])]
            raise ManyviewError(f"property {name} has NaN or infinite values (first at vertex {first_row + row})",
                                self.path)

    def read(self, start: int = 0, stop: int | None = None, rows: np.ndarray | None = None) -> Gaussians:
        """float32 :class:`Gaussians` of rows ``start:stop`` (all by default), or of the sorted indices ``rows``
        within that range: what :func:`~manyview.splat.ply.read_ply` gives for them."""
        stop = self._count if stop is None else min(stop, self._count)
        win = self.window(start, stop)
        if rows is not None:
            win = win[np.asarray(rows, dtype=np.intp) - start]
        k1 = self.rest_columns.shape[0]
        take = lambda c: torch.from_numpy(np.ascontiguousarray(win[:, c]))
        g = Gaussians(means=take(self.means_columns), log_scales=take(self.scale_columns),
                      quats=take(self.quat_columns), opacity_logits=take(self.opacity_column),
                      sh_dc=take(self.dc_columns).reshape(-1, 1, 3),
                      sh_rest=take(self.rest_columns.reshape(-1)).reshape(len(win), k1, 3))
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
            t = getattr(g, name)
            if not torch.isfinite(t).all():
                raise ManyviewError(f"NaN or infinite values among the {name} of vertices {start}..{stop - 1}",
                                    self.path)
        return g

    def sample(self, max_count: int, window_rows: int = 1 << 16) -> Gaussians:
        """Up to ``max_count`` Gaussians evenly spaced through the file (all of them when it holds no more), at SH
        degree 0: enough to bound the scene (:mod:`manyview.splat.bounds`) without reading it into memory."""
        n = len(self)
        if n <= max_count:
            rows = np.arange(n, dtype=np.int64)
        else:
            rows = np.arange(max_count, dtype=np.int64) * n // max_count
        parts = []
        for start in range(0, n, window_rows):
            lo, hi = np.searchsorted(rows, [start, start + window_rows])
            if hi > lo:
                parts.append(self.read(start, start + window_rows, rows[lo:hi]).with_sh_degree(0))
        return Gaussians.cat(parts) if parts else Gaussians.empty(sh_degree=0)

    def __repr__(self) -> str:
        return f"MappedGaussians({Path(self.path).name!r}, n={len(self)}, sh_degree={self.sh_degree})"


__all__ = ["MappedGaussians"]
