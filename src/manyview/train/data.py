"""Multi-view training data: endless synthetic streams and finite dataset folders, in one sample format.

A sample is the dict of :func:`manyview.synth.samples.views_to_sample` (images, pts3d, valid, c2w, fxfycxcy),
collated into a micro-batch by ``default_collate``.

Variable N: every sample of one micro-batch must have the same number of views, so N is drawn per micro-batch,
not per sample: from (seed, index // micro_batch), which by the trainer's sharding rule
(:func:`manyview.train.task.sample_indices`) is one group per (micro-batch, rank). N is thus deterministic,
independent of the number of DataLoader workers, and needs neither padding nor masks.

Seeds: training scenes are drawn from ``[0, EVAL_SEED_START)``; evaluation scenes use ``EVAL_SEED_START + i``
(:mod:`manyview.synth.samples`), so no held-out scene is ever trained on. Dataset folders are brought to the
training size by :func:`manyview.scene.resize_views`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from manyview.errors import ManyviewError
from manyview.scene import Views, resize_views
from manyview.synth.samples import EVAL_SEED_START, synthetic_sample, views_to_sample
from manyview.synth.scene import SceneKind
from manyview.train.task import indexed_stream


@dataclass
class StreamConfig:
    """What a training stream draws: image size, views per sample, scene kinds, augmentation, extra folders."""

    height: int = 112
    width: int = 112
    min_views: int = 2
    max_views: int = 8
    """Views per sample are drawn uniformly from [min_views, max_views], once per micro-batch."""
    kinds: tuple[SceneKind, ...] = ("object", "room")
    """Synthetic scene kinds, drawn with equal probability."""
    supersample: int = 1
    """Anti-aliasing of the synthetic renderer (samples per pixel side)."""
    orbit_spacing_deg: tuple[float, float] | None = None
    """Object scenes: the angle between consecutive orbit views, drawn per sample from this range (the orbit then
    spans views x spacing, at most 360 degrees), so that views overlap. None: every orbit spans 360 degrees."""
    color_jitter: float = 0.1
    """Per-view brightness / contrast / saturation factors in [1 - j, 1 + j]; 0 disables it."""
    folders: list[Path] = field(default_factory=list)
    """Dataset folders (COLMAP / transforms.json / manyview layout, with depth) mixed into the stream."""
    folder_fraction: float = 0.0
    """Share of samples drawn from ``folders`` (the rest are synthetic)."""
    num_workers: int = 0
    """DataLoader processes producing samples (0: in the training process)."""

    def check(self) -> None:
        if not 1 <= self.min_views <= self.max_views:
            raise ManyviewError(f"need 1 <= min_views <= max_views, got {self.min_views}, {self.max_views}")
        if self.height < 16 or self.width < 16:
            raise ManyviewError(f"image size {self.height}x{self.width} is too small")
        if not self.kinds:
            raise ManyviewError("kinds must name at least one scene kind")
        for k in self.kinds:
            if k not in ("object", "room"):
                raise ManyviewError(f"unknown scene kind {k!r}; expected 'object' or 'room'")
        if not 0.0 <= self.folder_fraction <= 1.0:
            raise ManyviewError(f"folder_fraction must be in [0, 1], got {self.folder_fraction}")
        if self.orbit_spacing_deg is not None:
            lo, hi = self.orbit_spacing_deg
            if not 0 < lo <= hi <= 360:
                raise ManyviewError(f"orbit_spacing_deg must satisfy 0 < low <= high <= 360, got {lo}, {hi}")
        if self.folder_fraction > 0 and not self.folders:
            raise ManyviewError("folder_fraction > 0 but no folders were given")


# --------------------------------------------------------------------------------------------------- samples
def color_jitter(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """(N, 3, H, W) in [0, 1]: independent brightness, contrast and saturation factors per view."""
    if strength <= 0:
        return images
    n = images.shape[0]
    f = 1 + strength * (2 * torch.rand(3, n, 1, 1, 1, generator=generator) - 1)
    out = images * f[0]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * f[1] + mean
    gray = (out * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = (out - gray) * f[2] + gray
    return out.clamp(0, 1)


def views_for_group(seed: int, group: int, min_views: int, max_views: int) -> int:
    """Number of views of every sample in micro-batch group ``group`` (deterministic in (seed, group))."""
    if min_views == max_views:
        return min_views
    state = np.random.SeedSequence([seed, group, 0x5EED]).generate_state(1)
    return min_views + int(state[0]) % (max_views - min_views + 1)


# --------------------------------------------------------------------------------------------------- folders
class FolderScenes:
    """Dataset folders loaded once (lazily) and fitted to the training size; draws view subsets of them."""

    def __init__(self, folders: Sequence[str | os.PathLike], height: int, width: int):
        if not folders:
            raise ManyviewError("no dataset folders given")
        self.folders = [Path(f) for f in folders]
        self.height, self.width = height, width
        self._cache: dict[int, Views] = {}

    def __len__(self) -> int:
        return len(self.folders)

    def views(self, i: int) -> Views:
        if i not in self._cache:
            from manyview.io.dataset import load_dataset

            folder = self.folders[i]
            views = load_dataset(folder)
            if views.cameras is None or views.depths is None:
                raise ManyviewError("dataset has no " + ("cameras" if views.cameras is None else "depth maps")
                                    + "; training needs both", folder)
            self._cache[i] = resize_views(views, self.height, self.width)
        return self._cache[i]

    def sample(self, i: int, indices: Sequence[int]) -> dict[str, Tensor]:
        return views_to_sample(self.views(i)[list(indices)], self.folders[i])

    def random_sample(self, num_views: int, generator: torch.Generator) -> dict[str, Tensor]:
        """A random folder and a window of nearby views in it (views are assumed ordered along a path)."""
        i = int(torch.randint(len(self), (1,), generator=generator))
        n_total = len(self.views(i))
        if n_total < num_views:
            raise ManyviewError(f"has {n_total} views, fewer than the {num_views} a sample needs", self.folders[i])
        window = min(n_total, 3 * num_views)
        start = int(torch.randint(n_total - window + 1, (1,), generator=generator))
        pick = start + torch.randperm(window, generator=generator)[:num_views]
        return self.sample(i, pick.tolist())


class FolderDataset(Dataset):
    """Finite, deterministic: item ``j`` is the ``j``-th window of ``num_views`` consecutive views over all
    folders (folders with fewer views than ``num_views`` contribute none). Same sample format as the stream."""

    def __init__(self, folders: Sequence[str | os.PathLike], num_views: int, height: int, width: int):
        self.scenes = FolderScenes(folders, height, width)
        self.num_views = num_views
        self.items = [(i, s) for i in range(len(self.scenes))
                      for s in range(0, len(self.scenes.views(i)) - num_views + 1, num_views)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        i, start = self.items[j]
        return self.scenes.sample(i, range(start, start + self.num_views))


# --------------------------------------------------------------------------------------------------- stream
class SampleMaker:
    """``sample_fn(index, generator)`` for :func:`indexed_stream`: what sample ``index`` of a run is.

    Everything random comes from the per-sample generator, except N, which comes from (seed, index // micro_batch).
    """

    def __init__(self, cfg: StreamConfig, seed: int, micro_batch: int):
        cfg.check()
        self.cfg, self.seed, self.micro_batch = cfg, seed, micro_batch
        self.folders = FolderScenes(cfg.folders, cfg.height, cfg.width) if cfg.folders else None

    def num_views(self, index: int) -> int:
        return views_for_group(self.seed, index // self.micro_batch, self.cfg.min_views, self.cfg.max_views)

    def __call__(self, index: int, generator: torch.Generator) -> dict[str, Tensor]:
        cfg = self.cfg
        n = self.num_views(index)
        draws = torch.rand(2, generator=generator)
        if self.folders is not None and float(draws[0]) < cfg.folder_fraction:
            sample = self.folders.random_sample(n, generator)
            sample["scene_seed"] = torch.tensor(-1, dtype=torch.int64)
        else:
            kind = cfg.kinds[min(int(float(draws[1]) * len(cfg.kinds)), len(cfg.kinds) - 1)]
            scene_seed, camera_seed = torch.randint(0, EVAL_SEED_START, (2,), generator=generator).tolist()
            trajectory = {}
            if kind == "object" and cfg.orbit_spacing_deg is not None:
                lo, hi = cfg.orbit_spacing_deg
                spacing = lo + (hi - lo) * float(torch.rand((), generator=generator))
                trajectory["arc_deg"] = min(360.0, spacing * n)
            sample = synthetic_sample(scene_seed, kind, n, cfg.height, cfg.width, camera_seed, cfg.supersample,
                                      **trajectory)
        sample["images"] = color_jitter(sample["images"], cfg.color_jitter, generator)
        return sample


def multiview_stream(cfg: StreamConfig, rank: int, world: int, seed: int, micro_batch: int,
                     start: int) -> Iterable[dict[str, Tensor]]:
    """The endless training stream of micro-batches for ``rank`` from micro-batch ``start`` (see module doc)."""
    return indexed_stream(SampleMaker(cfg, seed, micro_batch), rank, world, seed, micro_batch, start,
                          num_workers=cfg.num_workers)
