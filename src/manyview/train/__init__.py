"""Training: one trainer for every model (one process, DDP or FSDP2 under torchrun), with exact resume.

A model becomes trainable by implementing :class:`TrainTask` (see :mod:`manyview.train.toy` for the smallest
complete one); a run is a :class:`TrainConfig`; :func:`train` does the rest.
"""

from manyview.train.config import OptimConfig, ParallelConfig, ScheduleConfig, TrainConfig
from manyview.train.task import IndexedStream, TrainTask, indexed_stream, sample_indices
from manyview.train.trainer import TrainResult, train

__all__ = ["IndexedStream", "OptimConfig", "ParallelConfig", "ScheduleConfig", "TrainConfig", "TrainResult",
           "TrainTask", "indexed_stream", "sample_indices", "train"]
