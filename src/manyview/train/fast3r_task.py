"""Fast3R made trainable: the :class:`~manyview.train.TrainTask` and its run presets.

Loss: :func:`manyview.train.losses.fast3r_loss` on the global and the local head (alpha 0.2, reference/fast3r.md
§5.1). Image indices: in train mode :class:`~manyview.models.fast3r.Fast3R` gives view 0 index 0 and the other
views distinct random slots of the whole 1000-slot table (``decoder_args.random_image_idx_embedding``), drawn from
the global torch RNG, which the trainer seeds per rank and restores on resume. Final weights are written in the
released Hugging Face layout (``config.json`` + ``model.safetensors``), loadable with ``Fast3R.from_pretrained``.

Presets (``PRESETS``):

- ``tiny``: a short run to check a setup (the tiny model, 64 x 64 images, 2-4 views, 200 steps);
- ``bundled``: the recipe of the weights shipped in ``manyview/assets/fast3r_bundled`` (tiny model, 112 x 112,
  2-8 views, object orbits with overlapping views and room walkthroughs, AdamW 2e-4 with warm-up and cosine
  decay), sized for hours of CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

from manyview.models.fast3r import Fast3R, fast3r_config
from manyview.train.config import OptimConfig, ScheduleConfig, TrainConfig
from manyview.train.data import StreamConfig, multiview_stream
from manyview.train.losses import fast3r_loss


@dataclass
class Fast3RTaskConfig:
    """The model and its data."""

    model: str = "tiny"
    """Fast3R preset: tiny, small, base or vit_large_512."""
    alpha: float = 0.2
    """Weight of the -log(confidence) regulariser of the confidence-weighted loss."""
    data: StreamConfig = field(default_factory=StreamConfig)


class Fast3RTask:
    """Fast3R on multi-view streams (:mod:`manyview.train.data`); see the module docstring."""

    def __init__(self, cfg: Fast3RTaskConfig | None = None):
        self.cfg = cfg or Fast3RTaskConfig()
        fast3r_config(self.cfg.model)  # fail early on an unknown preset
        self.cfg.data.check()

    def build_model(self) -> nn.Module:
        return Fast3R(self.cfg.model)

    def make_stream(self, rank: int, world: int, seed: int, micro_batch: int, start: int) -> Iterable:
        return multiview_stream(self.cfg.data, rank, world, seed, micro_batch, start)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["images"])  # (B, N, 3, H, W) -> pointmaps (B, N, H, W, 3), confidences (B, N, H, W)
        loss, metrics = fast3r_loss(out.pts3d_global, out.conf_global, out.pts3d_local, out.conf_local,
                                    batch["pts3d"], batch["c2w"], batch["valid"], alpha=self.cfg.alpha)
        metrics["views"] = torch.tensor(float(batch["images"].shape[1]))
        return loss, metrics

    def save_weights(self, state_dict: dict[str, Tensor], directory: Path) -> None:
        model = self.build_model()
        model.load_state_dict(state_dict)
        # Record the training crop, as the released config does (512): inference defaults to it.
        data = self.cfg.data
        model.config.encoder_args.img_size = data.height if data.height == data.width else [data.height, data.width]
        model.save_pretrained(directory)


@dataclass
class Fast3RRun:
    """A Fast3R training run: the trainer's config and the task's."""

    train: TrainConfig
    task: Fast3RTaskConfig


def _tiny() -> Fast3RRun:
    return Fast3RRun(
        TrainConfig(out_dir=Path("runs/fast3r_tiny"), steps=200, batch_size=2, log_every=5, ckpt_every=50,
                    optim=OptimConfig(lr=3e-4), schedule=ScheduleConfig(warmup_steps=20, min_lr=1e-6)),
        Fast3RTaskConfig("tiny", data=StreamConfig(height=64, width=64, min_views=2, max_views=4)),
    )


def _bundled() -> Fast3RRun:
    # ~0.7 s per step on 2 free CPU cores (4 samples x 5 views on average, 112 x 112, fp32): 7000 steps is ~1.5 h.
    # Object orbits with 10-50 degrees between consecutive views: with full 360-degree orbits (the first recipe)
    # a 2-view sample showed opposite sides of the object, and the global head stalled at the pose prior.
    # Checkpoints every 40 steps (2-10 minutes); the cosine ends exactly at step 7000, resume keeps it.
    return Fast3RRun(
        TrainConfig(out_dir=Path("runs/fast3r_bundled"), steps=7000, batch_size=4, log_every=10, ckpt_every=40,
                    keep_last=2, optim=OptimConfig(lr=2e-4, betas=(0.9, 0.95), weight_decay=0.05, grad_clip=1.0),
                    schedule=ScheduleConfig(warmup_steps=300, min_lr=1e-6), seed=0),
        Fast3RTaskConfig("tiny", data=StreamConfig(height=112, width=112, min_views=2, max_views=8,
                                                   orbit_spacing_deg=(10.0, 50.0), color_jitter=0.1)),
    )


PRESETS = {"tiny": _tiny, "bundled": _bundled}


def preset(name: str) -> Fast3RRun:
    """A fresh copy of run preset ``name``."""
    from manyview.errors import ManyviewError

    if name not in PRESETS:
        raise ManyviewError(f"unknown Fast3R training preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())
