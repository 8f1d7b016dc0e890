"""Per-layer key/value storage that grows along the token axis.

Appending by ``torch.cat`` copies the whole cache on every append (quadratic in the number of appends); this
store keeps a buffer per layer with spare capacity and grows it geometrically, so appends are amortised O(new
tokens). ``keys(l)`` / ``values(l)`` return views of the filled part, ready for SDPA.
Layout: (B, heads, tokens, head_dim).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(self, n_layers: int, growth: float = 2.0):
        if n_layers < 1:
            raise ValueError("a KV cache needs at least one layer")
        self.n_layers = n_layers
        self.growth = growth
        self._k: list[Tensor | None] = [None] * n_layers
        self._v: list[Tensor | None] = [None] * n_layers
        self._len = [0] * n_layers

    def __len__(self) -> int:
        """Tokens held (the same in every layer once an append has reached all layers)."""
        return self._len[0]

    @property
    def capacity(self) -> int:
        return 0 if self._k[0] is None else self._k[0].shape[2]

    def reserve(self, tokens: int) -> None:
        """Make room for ``tokens`` in total without further reallocation (only once shapes are known)."""
        for layer in range(self.n_layers):
            if self._k[layer] is not None and self._k[layer].shape[2] < tokens:
                self._k[layer] = self._grow(self._k[layer], self._len[layer], tokens)
                self._v[layer] = self._grow(self._v[layer], self._len[layer], tokens)

    @staticmethod
    def _grow(buf: Tensor, used: int, capacity: int) -> Tensor:
        new = buf.new_empty(buf.shape[:2] + (capacity,) + buf.shape[3:])
        new[:, :, :used] = buf[:, :, :used]
        return new

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Append k, v (B, heads, n, head_dim) after the tokens already held in ``layer``."""
        n, used = k.shape[2], self._len[layer]
        if self._k[layer] is None:
            self._k[layer], self._v[layer] = k.clone(), v.clone()
            self._len[layer] = n
            return
        buf_k, buf_v = self._k[layer], self._v[layer]
        if k.shape[:2] != buf_k.shape[:2] or k.shape[3:] != buf_k.shape[3:]:
            raise ValueError(f"cannot append keys of shape {tuple(k.shape)} to a cache of shape "
                             f"{tuple(buf_k.shape[:2])} x tokens x {tuple(buf_k.shape[3:])}")
        if used + n > buf_k.shape[2]:
            capacity = max(used + n, int(buf_k.shape[2] * self.growth))
            buf_k, buf_v = self._grow(buf_k, used, capacity), self._grow(buf_v, used, capacity)
            self._k[layer], self._v[layer] = buf_k, buf_v
        buf_k[:, :, used:used + n] = k
        buf_v[:, :, used:used + n] = v
        self._len[layer] = used + n

    def keys(self, layer: int) -> Tensor:
        return self._k[layer][:, :, : self._len[layer]]

    def values(self, layer: int) -> Tensor:
        return self._v[layer][:, :, : self._len[layer]]

    def select_tokens(self, index: Tensor) -> "KVCache":
        """A new cache holding only the tokens at ``index`` (1-D, along the token axis), in that order."""
        out = KVCache(self.n_layers, self.growth)
        for layer in range(self.n_layers):
            if self._k[layer] is not None:
                out.append(layer, self.keys(layer).index_select(2, index), self.values(layer).index_select(2, index))
        return out

    def to(self, *args, **kwargs) -> "KVCache":
        out = KVCache(self.n_layers, self.growth)
        for layer in range(self.n_layers):
            if self._k[layer] is not None:
                out.append(layer, self.keys(layer).to(*args, **kwargs), self.values(layer).to(*args, **kwargs))
        return out


def concat_reference(chunks: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """What :class:`KVCache` must equal after appending ``chunks`` to one layer: a plain concatenation."""
    return torch.cat([k for k, _ in chunks], dim=2), torch.cat([v for _, v in chunks], dim=2)
