"""Pair graphs: the edges and counts of DUSt3R's make_pairs graphs."""

import pytest

from manyview.errors import ManyviewError
from manyview.recon.pairs import make_pairs


def _unordered(pairs):
    return {frozenset(p) for p in pairs}


def test_complete_graph_has_every_pair_in_both_directions():
    pairs = make_pairs(5, "complete")
    assert len(pairs) == 5 * 4 == len(set(pairs))
    assert set(pairs) == {(i, j) for i in range(5) for j in range(5) if i != j}
    # DUSt3R's order: (i, j) for j < i first, then the reversed copies in the same order
    assert pairs[:3] == [(1, 0), (2, 0), (2, 1)]
    assert pairs[10:] == [(j, i) for i, j in pairs[:10]]


def test_without_symmetrize_each_unordered_pair_once():
    pairs = make_pairs(6, "complete", symmetrize=False)
    assert len(pairs) == 15 == len(_unordered(pairs))


@pytest.mark.parametrize("n,k", [(7, 1), (7, 2), (7, 3), (10, 2)])
def test_cyclic_sliding_window(n, k):
    pairs = make_pairs(n, f"swin-{k}", symmetrize=False)
    expected = {frozenset((i, (i + d) % n)) for i in range(n) for d in range(1, k + 1)}
    assert _unordered(pairs) == expected
    assert len(pairs) == n * k  # 2k < n: no offset reaches a pair twice
    assert frozenset((0, n - 1)) in _unordered(pairs)  # loop closure


def test_noncyclic_sliding_window_has_no_loop_closure():
    pairs = make_pairs(6, "swin-2-noncyclic", symmetrize=False)
    assert _unordered(pairs) == {frozenset(p) for p in [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4),
                                                         (3, 5), (4, 5)]}
    assert len(make_pairs(6, "swin-2-noncyclic")) == 18


def test_window_larger_than_the_set_is_the_complete_graph():
    assert _unordered(make_pairs(4, "swin-5")) == _unordered(make_pairs(4, "complete"))
    assert len(make_pairs(4, "swin-5")) == 12


def test_swin_default_window_is_three():
    assert make_pairs(8, "swin") == make_pairs(8, "swin-3")


def test_logwin_offsets_are_powers_of_two():
    pairs = make_pairs(10, "logwin-3-noncyclic", symmetrize=False)
    offsets = {abs(i - j) for i, j in pairs}
    assert offsets == {1, 2, 4}
    assert len(pairs) == 9 + 8 + 6
    cyclic = make_pairs(10, "logwin-3", symmetrize=False)
    assert len(cyclic) == 30 and frozenset((0, 6)) in _unordered(cyclic)  # 0 - 4 wraps to 6


@pytest.mark.parametrize("ref", [0, 3])
def test_one_reference(ref):
    pairs = make_pairs(5, f"oneref-{ref}")
    assert len(pairs) == 8
    assert all(ref in p for p in pairs)
    assert {p for p in pairs if p[0] == ref} == {(ref, j) for j in range(5) if j != ref}
    assert make_pairs(5, "oneref") == make_pairs(5, "oneref-0")


@pytest.mark.parametrize("graph", ["complete", "swin-2", "swin-1-noncyclic", "logwin-2", "oneref-1"])
def test_symmetrized_graphs_are_closed_under_reversal(graph):
    pairs = make_pairs(6, graph)
    assert set(pairs) == {(j, i) for i, j in pairs}
    assert len(pairs) == len(set(pairs)) and all(i != j for i, j in pairs)


@pytest.mark.parametrize("graph", ["full", "swin-x", "oneref-9", "complete-2", "swin-0", "oneref-1-noncyclic",
                                   "swin-2-3"])
def test_bad_graph_names_raise(graph):
    with pytest.raises(ManyviewError):
        make_pairs(5, graph)


def test_needs_two_views():
    with pytest.raises(ManyviewError, match="at least 2"):
        make_pairs(1, "complete")
