import itertools

import torch

from manyview.train.task import IndexedStream, TrainTask, indexed_stream, sample_indices
from manyview.train.toy import ToyTask


def _index_sample(index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"index": torch.tensor(index), "noise": torch.rand(2, generator=generator)}


def _take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_union_over_ranks_does_not_depend_on_world_size():
    for k in range(5):
        one = list(sample_indices(k, 0, 1, 6))
        two = [i for r in range(2) for i in sample_indices(k, r, 2, 3)]
        three = [i for r in range(3) for i in sample_indices(k, r, 3, 2)]
        assert one == two == three == list(range(6 * k, 6 * k + 6))


def test_ranks_see_disjoint_samples_and_same_sample_is_same_data():
    r0 = _take(IndexedStream(_index_sample, 0, 2, seed=7, micro_batch=2, start=0), 3)
    r1 = _take(IndexedStream(_index_sample, 1, 2, seed=7, micro_batch=2, start=0), 3)
    single = _take(IndexedStream(_index_sample, 0, 1, seed=7, micro_batch=4, start=0), 3)
    for a, b, s in zip(r0, r1, single, strict=True):
        assert not set(a["index"].tolist()) & set(b["index"].tolist())
        assert torch.equal(torch.cat([a["noise"], b["noise"]]), s["noise"])  # data follows the sample index
    other_seed = _take(IndexedStream(_index_sample, 0, 1, seed=8, micro_batch=4, start=0), 1)
    assert not torch.equal(other_seed[0]["noise"], single[0]["noise"])


def test_starting_at_k_equals_skipping_k():
    full = _take(IndexedStream(_index_sample, 1, 2, seed=3, micro_batch=2, start=0), 6)
    late = _take(IndexedStream(_index_sample, 1, 2, seed=3, micro_batch=2, start=4), 2)
    for a, b in zip(full[4:], late, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["noise"], b["noise"])


def test_dataloader_workers_keep_the_order():
    plain = _take(indexed_stream(_index_sample, 1, 2, seed=5, micro_batch=3, start=2), 5)
    workers = _take(indexed_stream(_index_sample, 1, 2, seed=5, micro_batch=3, start=2, num_workers=2), 5)
    for a, b in zip(plain, workers, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["noise"], b["noise"])


def test_toy_task_satisfies_the_protocol():
    task = ToyTask()
    assert isinstance(task, TrainTask)
    batch = next(iter(task.make_stream(0, 1, 0, micro_batch=3, start=0)))
    loss, metrics = task.loss(task.build_model(), batch)
    assert loss.ndim == 0 and set(metrics) == {"mae"}
