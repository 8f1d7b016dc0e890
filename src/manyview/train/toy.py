"""A tiny transformer regression task: the smallest complete :class:`TrainTask`.

It is the example to copy when making a model trainable, the workload of the trainer's own tests (DDP / FSDP
equivalence, exact resume), and a quick check that a multi-GPU setup works::

    torchrun --nproc-per-node 2 -m manyview.train.toy --train.parallel.mode fsdp --train.out-dir /tmp/toy

Each sample is ``tokens`` random vectors; the target of each token mixes its own input (through a fixed
nonlinearity) with the mean of all tokens, so attention has something to learn. The target map is fixed by
``ToyConfig.task_seed``; the run's seed only picks the samples.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from einops import rearrange
from safetensors.torch import save_file
from torch import Tensor, nn

from manyview.nn.attention import attention
from manyview.train.config import TrainConfig
from manyview.train.task import indexed_stream


@dataclass
class ToyConfig:
    in_dim: int = 4
    out_dim: int = 3
    dim: int = 16
    heads: int = 2
    depth: int = 2
    tokens: int = 6
    dropout: float = 0.0
    num_workers: int = 0
    task_seed: int = 1234


class ToyBlock(nn.Module):
    """Pre-LN self-attention + MLP, with biases (so weight-decay groups have both kinds of parameter)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, dim)
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        x = x + self.drop(self.proj(rearrange(attention(q, k, v), "b h l d -> b l (h d)")))
        return x + self.drop(self.mlp(self.norm2(x)))


class ToyTransformer(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.in_dim, cfg.dim)
        self.blocks = nn.ModuleList(ToyBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.out_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, in_dim) -> (B, L, out_dim)
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class ToyTask:
    """Regress the fixed token map with MSE; reports MAE as a metric."""

    def __init__(self, cfg: ToyConfig | None = None):
        self.cfg = cfg or ToyConfig()
        g = torch.Generator().manual_seed(self.cfg.task_seed)
        self.own = torch.randn(self.cfg.in_dim, self.cfg.out_dim, generator=g)
        self.mixed = torch.randn(self.cfg.in_dim, self.cfg.out_dim, generator=g)
        self.output_dtypes: set[torch.dtype] = set()  # what the network produced (shows autocast at work)

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Tensor]:
        x = torch.randn(self.cfg.tokens, self.cfg.in_dim, generator=generator)
        y = torch.tanh(x @ self.own) + x.mean(0, keepdim=True) @ self.mixed
        return {"x": x, "y": y}

    def build_model(self) -> nn.Module:
        return ToyTransformer(self.cfg)

    def make_stream(self, rank: int, world: int, seed: int, micro_batch: int, start: int) -> Iterable:
        return indexed_stream(self.sample, rank, world, seed, micro_batch, start, num_workers=self.cfg.num_workers)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        pred = model(batch["x"])
        self.output_dtypes.add(pred.dtype)
        err = pred.float() - batch["y"]
        return err.square().mean(), {"mae": err.abs().mean()}

    def save_weights(self, state_dict: dict[str, Tensor], directory: Path) -> None:
        """Hugging Face-style layout: config.json + model.safetensors."""
        save_file(state_dict, str(Path(directory) / "model.safetensors"))
        (Path(directory) / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1))


@dataclass
class ToyRun:
    """Command-line arguments of ``python -m manyview.train.toy``."""

    train: TrainConfig
    toy: ToyConfig


def _main() -> None:
    import tyro

    from manyview.train.trainer import train

    args = tyro.cli(ToyRun, default=ToyRun(TrainConfig(out_dir=Path("runs/toy"), steps=200, batch_size=16,
                                                       log_every=10, ckpt_every=100), ToyConfig()))
    result = train(args.train, ToyTask(args.toy))
    if result.history:
        print(f"step {result.step}: loss {result.history[-1]['loss']:.4g}")


if __name__ == "__main__":
    _main()
