"""The 3D student: a point backbone in pure PyTorch, points (P, 3) (+ colours) -> per-point features (P, C).

Attention over each point's ``k`` nearest neighbours (a point-transformer layer; no sparse-convolution library):
the query is the point's own token, keys and values are the neighbours' tokens plus a learned encoding of their
offsets, softmax over the neighbours, per head. Positions are first expressed in the scene's own frame (centred on
the mean, scaled by the RMS distance to it), so the features do not change when the scene is moved or scaled, and
permuting the input points permutes the output features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from manyview.nn.blocks import Mlp


@dataclass(frozen=True)
class PointBackboneConfig:
    width: int = 64
    depth: int = 3
    heads: int = 4
    k: int = 16
    use_colors: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def knn_indices(points: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """(B, P, k) indices of each point's k nearest neighbours (itself included, first)."""
    B, P, _ = points.shape
    k = min(k, P)
    out = []
    for i in range(0, P, chunk):
        d = torch.cdist(points[:, i: i + chunk], points)  # (B, c, P)
        out.append(d.topk(k, dim=-1, largest=False).indices)
    return torch.cat(out, dim=1)


def gather_neighbours(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, P, D), idx (B, P, k) -> (B, P, k, D)."""
    B, P, k = idx.shape
    flat = idx.reshape(B, P * k, 1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, flat).reshape(B, P, k, x.shape[-1])


def normalize_points(points: Tensor) -> Tensor:
    """(B, P, 3) centred on each scene's mean and scaled by its RMS distance to it."""
    centred = points - points.mean(dim=1, keepdim=True)
    scale = centred.square().sum(-1).mean(-1).sqrt().clamp_min(1e-8)
    return centred / scale[:, None, None]


class KnnAttention(nn.Module):
    """x + attention(norm(x_i) -> norm(x_j) + pe(p_j - p_i), j in kNN(i)); x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.pos = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: Tensor, offsets: Tensor, idx: Tensor) -> Tensor:
        """x (B, P, D), offsets (B, P, k, 3) = p_j - p_i, idx (B, P, k)."""
        y = self.norm1(x)
        q = rearrange(self.q(y), "b p (h d) -> b p h 1 d", h=self.heads)
        pe = self.pos(offsets)  # (B, P, k, D)
        k_, v = (gather_neighbours(self.kv(y), idx) + pe.repeat(1, 1, 1, 2)).chunk(2, dim=-1)
        k_ = rearrange(k_, "b p k (h d) -> b p h k d", h=self.heads)
        v = rearrange(v, "b p k (h d) -> b p h k d", h=self.heads)
        attn = ((q * k_).sum(-1) * k_.shape[-1] ** -0.5).softmax(dim=-1)  # (B, P, h, k)
        out = rearrange((attn[..., None] * v).sum(-2), "b p h d -> b p (h d)")
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class PointStudent(nn.Module):
    """points (B, P, 3) or (P, 3), colours alike in [0, 1] (optional) -> features (B, P, dim) or (P, dim)."""

    def __init__(self, dim: int, cfg: PointBackboneConfig = PointBackboneConfig()):
        super().__init__()
        self.cfg, self.dim = cfg, dim
        self.embed = nn.Linear(6 if cfg.use_colors else 3, cfg.width)
        self.blocks = nn.ModuleList(KnnAttention(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, dim)

    def forward(self, points: Tensor, colors: Tensor | None = None) -> Tensor:
        single = points.dim() == 2
        if single:
            points = points[None]
            colors = None if colors is None else colors[None]
        pos = normalize_points(points.float())
        idx = knn_indices(pos, self.cfg.k)
        offsets = gather_neighbours(pos, idx) - pos[:, :, None]
        if self.cfg.use_colors:
            colors = torch.full_like(pos, 0.5) if colors is None else colors.to(pos.dtype)
            x = self.embed(torch.cat((pos, colors * 2 - 1), dim=-1))
        else:
            x = self.embed(pos)
        for block in self.blocks:
            x = block(x, offsets, idx)
        out = self.out(self.norm(x))
        return out[0] if single else out


__all__ = ["KnnAttention", "PointBackboneConfig", "PointStudent", "gather_neighbours", "knn_indices",
           "normalize_points"]
