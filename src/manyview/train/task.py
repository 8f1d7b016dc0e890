"""What the trainer needs from a model: the :class:`TrainTask` protocol, and a seekable sharded data stream.

Data position is counted in micro-batches. Micro-batch ``k`` (0-based, the same ``k`` on every rank) is the
``k``-th slice of ``world * micro_batch`` consecutive samples, and rank ``r`` takes the ``r``-th part of it:

    samples of (k, r) = [(k * world + r) * micro_batch, (k * world + r + 1) * micro_batch)

so the union over ranks does not depend on how many ranks there are, and resuming at micro-batch ``k`` needs
no replay: a stream just starts there.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate


@runtime_checkable
class TrainTask(Protocol):
    """A model family made trainable. The trainer calls, on every rank:

    - ``build_model()`` once, after seeding every rank identically, so all ranks start from the same weights;
    - ``make_stream(rank, world, seed, micro_batch, start)`` once: an endless iterable of micro-batches of
      ``micro_batch`` samples for this rank, beginning at micro-batch ``start`` (see the module docstring;
      :func:`indexed_stream` builds one from a per-sample function);
    - ``loss(model, batch)`` once per micro-batch, under autocast, with tensors already on the device. It must
      run the network through ``model(...)`` (the wrapper's forward is what syncs DDP / gathers FSDP
      parameters) and return a scalar loss averaged over the micro-batch, and a dict of scalar metrics (the
      same keys every call) that are averaged over ranks and logged.

    Optional methods, used when present:

    - ``shard_units(model) -> Iterable[nn.Module]``: the submodules FSDP shards one by one (default: the
      members of every ``nn.ModuleList``);
    - ``save_weights(state_dict, directory)``: export the final full weights (e.g. Hugging Face layout); it is
      called on rank 0 with a directory that is renamed to ``out_dir/final`` once the method returns.
    """

    def build_model(self) -> nn.Module: ...

    def make_stream(self, rank: int, world: int, seed: int, micro_batch: int, start: int) -> Iterable[Any]: ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Mapping[str, Tensor | float]]: ...


def sample_indices(k: int, rank: int, world: int, micro_batch: int) -> range:
    """Global sample indices of micro-batch ``k`` on ``rank``."""
    first = (k * world + rank) * micro_batch
    return range(first, first + micro_batch)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator for sample ``index`` alone: its randomness depends on (seed, index), not on who draws it."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class IndexedStream(IterableDataset):
    """Micro-batches built sample by sample from ``sample_fn(index, generator)``, sharded by rank and worker.

    DataLoader worker ``w`` of ``n`` makes micro-batches ``start + w, start + w + n, ...``; the DataLoader
    returns workers' outputs round-robin, so the sequence is the same for any number of workers.
    """

    def __init__(self, sample_fn: Callable[[int, torch.Generator], Any], rank: int, world: int, seed: int,
                 micro_batch: int, start: int, collate: Callable[[list], Any] = default_collate):
        self.sample_fn, self.collate = sample_fn, collate
        self.rank, self.world, self.seed, self.micro_batch, self.start = rank, world, seed, micro_batch, start

    def batch(self, k: int) -> Any:
        idx = sample_indices(k, self.rank, self.world, self.micro_batch)
        return self.collate([self.sample_fn(i, sample_generator(self.seed, i)) for i in idx])

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = self.start + worker
        while True:
            yield self.batch(k)
            k += workers


def indexed_stream(sample_fn: Callable[[int, torch.Generator], Any], rank: int, world: int, seed: int,
                   micro_batch: int, start: int, num_workers: int = 0,
                   collate: Callable[[list], Any] = default_collate, pin_memory: bool = False) -> Iterable[Any]:
    """An :class:`IndexedStream`, behind a DataLoader with ``num_workers`` processes when that is > 0."""
    stream = IndexedStream(sample_fn, rank, world, seed, micro_batch, start, collate)
    if num_workers == 0:
        return stream
    # Own generator: creating the workers must not draw from the global RNG, which resume restores exactly.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed + rank))
