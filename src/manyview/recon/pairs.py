"""Pair graphs: which ordered view pairs a pairwise (DUSt3R-style) network sees.

A graph is named by a short string, as in DUSt3R's ``make_pairs``:

- ``complete``: every unordered pair once;
- ``swin-K`` / ``swin-K-noncyclic``: each view with the next K views, wrapping around the end (loop closure)
  unless ``noncyclic``;
- ``logwin-K`` / ``logwin-K-noncyclic``: each view with the views 1, 2, 4, ..., 2^(K-1) before and after it;
- ``oneref-R``: reference view R with every other view (``oneref`` alone means R = 0).

With ``symmetrize`` (the default) the reversed pair (j, i) follows every (i, j), so the network predicts both
views in each view's frame; global alignment uses both directions.
"""

from __future__ import annotations

from manyview.errors import ManyviewError

GRAPH_KINDS = ("complete", "swin", "logwin", "oneref")


def _parse(graph: str) -> tuple[str, int | None, bool]:
    """'swin-3-noncyclic' -> ('swin', 3, False). The number is None when not given."""
    parts = graph.strip().lower().split("-")
    kind, rest = parts[0], parts[1:]
    cyclic = True
    if rest and rest[-1] == "noncyclic":
        cyclic, rest = False, rest[:-1]
    if kind not in GRAPH_KINDS:
        raise ManyviewError(f"unknown pair graph {graph!r}; expected one of complete, swin-K, logwin-K, oneref-R")
    if kind in ("complete", "oneref") and not cyclic:
        raise ManyviewError(f"pair graph {graph!r}: '-noncyclic' only applies to swin and logwin")
    if len(rest) > 1 or (kind == "complete" and rest):
        raise ManyviewError(f"cannot parse pair graph {graph!r}")
    number = None
    if rest:
        try:
            number = int(rest[0])
        except ValueError:
            raise ManyviewError(f"pair graph {graph!r}: {rest[0]!r} is not an integer") from None
    return kind, number, cyclic


def _window_pairs(n: int, offsets: list[int], cyclic: bool) -> list[tuple[int, int]]:
    """Unordered pairs (i, j), i < j, of views ``offset`` apart (wrapping when cyclic), sorted."""
    pairs = set()
    for i in range(n):
        for off in offsets:
            for j in (i + off, i - off):
                if cyclic:
                    j %= n
                if 0 <= j < n and j != i:
                    pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def make_pairs(num_views: int, graph: str = "complete", symmetrize: bool = True) -> list[tuple[int, int]]:
    """Ordered view pairs (i, j) for ``num_views`` views under the named graph.

    Without ``symmetrize`` each unordered pair appears once; with it, the reversed copies of all pairs follow
    the originals (DUSt3R's order), so ``complete`` gives N (N - 1) pairs.
    """
    if num_views < 2:
        raise ManyviewError(f"a pair graph needs at least 2 views, got {num_views}")
    kind, number, cyclic = _parse(graph)
    if kind == "complete":
        pairs = [(i, j) for i in range(num_views) for j in range(i)]
    elif kind in ("swin", "logwin"):
        k = 3 if number is None else number
        if k < 1:
            raise ManyviewError(f"pair graph {graph!r}: the window must be at least 1")
        offsets = list(range(1, k + 1)) if kind == "swin" else [2**e for e in range(k)]
        pairs = _window_pairs(num_views, offsets, cyclic)
    else:  # oneref
        ref = 0 if number is None else number
        if not 0 <= ref < num_views:
            raise ManyviewError(f"pair graph {graph!r}: reference view {ref} is not among {num_views} views")
        pairs = [(ref, j) for j in range(num_views) if j != ref]
    if symmetrize:
        pairs = pairs + [(j, i) for i, j in pairs]
    return pairs
