"""Gaussians: the parameters of a 3D Gaussian splatting scene, stored pre-activation as 3DGS stores them.

Storage is the raw, optimisable form (log-scales, opacity logits, unnormalised quaternions, SH coefficients);
activated values are properties. Renderers only read the six tensors named in :class:`GaussianStore` and ask the
store itself for a dtype or device (``to``), so a container that shards them across devices can stand in for
:class:`Gaussians` without the renderer changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from manyview.geometry.rotation import quaternion_to_matrix
from manyview.splat.sh import degree_from_coefficients, num_coefficients, sh_to_rgb

PARAMETER_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


@runtime_checkable
class GaussianStore(Protocol):
    """What a renderer reads. Shapes: means (P, 3), log_scales (P, 3), quats (P, 4) w first,
    opacity_logits (P,), sh_dc (P, 1, 3), sh_rest (P, K - 1, 3). ``to`` takes ``Tensor.to``'s arguments
    and returns a store of the same kind (backends convert through it, keeping gradients flowing to the store)."""

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh_dc: Tensor
    sh_rest: Tensor

    def to(self, *args, **kwargs) -> GaussianStore: ...


def check_shapes(store: GaussianStore, kind: str) -> None:
    """Raise ValueError unless the six tensors of ``store`` have the shapes :class:`GaussianStore` names (their
    ``shape``: for a sharded store the global shape)."""
    p = store.means.shape[0] if store.means.dim() == 2 else -1
    expected = {"means": (p, 3), "log_scales": (p, 3), "quats": (p, 4), "opacity_logits": (p,), "sh_dc": (p, 1, 3)}
    for name, shape in expected.items():
        if tuple(getattr(store, name).shape) != shape:
            raise ValueError(f"{kind}.{name} must be {shape}, got {tuple(getattr(store, name).shape)}")
    rest = store.sh_rest
    if rest.dim() != 3 or rest.shape[0] != p or rest.shape[2] != 3:
        raise ValueError(f"{kind}.sh_rest must be ({p}, K - 1, 3), got {tuple(rest.shape)}")
    try:
        degree_from_coefficients(rest.shape[1] + 1)
    except ValueError as e:
        raise ValueError(f"{kind}.sh_rest: {e}") from None


@dataclass(frozen=True, eq=False)
class Gaussians:
    means: Tensor  # (P, 3) world coordinates
    log_scales: Tensor  # (P, 3) log of the standard deviations along the local axes
    quats: Tensor  # (P, 4) rotation (w, x, y, z), any non-zero norm
    opacity_logits: Tensor  # (P,) logit of the peak opacity
    sh_dc: Tensor  # (P, 1, 3) degree-0 SH coefficient per colour channel
    sh_rest: Tensor  # (P, K - 1, 3) higher-degree coefficients, K = (degree + 1)^2

    def __post_init__(self):
        check_shapes(self, "Gaussians")

    # ----------------------------------------------------------------- construction
    @classmethod
    def empty(cls, sh_degree: int = 3, dtype: torch.dtype = torch.float32, device=None) -> Gaussians:
        z = lambda *s: torch.zeros(s, dtype=dtype, device=device)
        return cls(z(0, 3), z(0, 3), z(0, 4), z(0), z(0, 1, 3), z(0, num_coefficients(sh_degree) - 1, 3))

    @classmethod
    def from_dict(cls, params: dict[str, Tensor]) -> Gaussians:
        return cls(**{name: params[name] for name in PARAMETER_NAMES})

    @staticmethod
    def cat(parts: Sequence[Gaussians]) -> Gaussians:
        if not parts:
            raise ValueError("Gaussians.cat needs at least one Gaussians")
        return Gaussians(*(torch.cat([getattr(g, n) for g in parts]) for n in PARAMETER_NAMES))

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return degree_from_coefficients(self.sh_rest.shape[1] + 1)

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def scales(self) -> Tensor:
        """(P, 3) standard deviations."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        """(P,) peak opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        """(P, 3, 3) rotation matrices (local axes in world coordinates)."""
        return quaternion_to_matrix(self.quats)

    @property
    def sh(self) -> Tensor:
        """(P, K, 3) all SH coefficients."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    @property
    def colors(self) -> Tensor:
        """(P, 3) view-independent (DC) colour, unclamped."""
        return sh_to_rgb(self.sh_dc[:, 0])

    def covariances(self) -> Tensor:
        """(P, 3, 3) world covariances R diag(s^2) R^T."""
        m = self.rotations * self.scales[:, None, :]
        return m @ m.transpose(-1, -2)

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ----------------------------------------------------------------- new objects
    def replace(self, **changes: Tensor) -> Gaussians:
        return replace(self, **changes)

    def select(self, index: Tensor) -> Gaussians:
        """Subset by boolean mask or index tensor."""
        return Gaussians(*(getattr(self, n)[index] for n in PARAMETER_NAMES))

    def to(self, *args, **kwargs) -> Gaussians:
        return Gaussians(*(getattr(self, n).to(*args, **kwargs) for n in PARAMETER_NAMES))

    def detach(self) -> Gaussians:
        return Gaussians(*(getattr(self, n).detach() for n in PARAMETER_NAMES))

    def clone(self) -> Gaussians:
        return Gaussians(*(getattr(self, n).clone() for n in PARAMETER_NAMES))

    def requires_grad_(self, requires_grad: bool = True) -> Gaussians:
        """Mark every parameter as a leaf that collects gradients (in place, returns self)."""
        for n in PARAMETER_NAMES:
            getattr(self, n).requires_grad_(requires_grad)
        return self

    def with_sh_degree(self, degree: int) -> Gaussians:
        """Truncate or zero-pad the higher-degree coefficients to ``degree``."""
        k = num_coefficients(degree) - 1
        rest = self.sh_rest[:, :k]
        if rest.shape[1] < k:
            pad = rest.new_zeros(len(self), k - rest.shape[1], 3)
            rest = torch.cat([rest, pad], dim=1)
        return replace(self, sh_rest=rest)

    def __repr__(self) -> str:
        return f"Gaussians(n={len(self)}, sh_degree={self.sh_degree}, dtype={self.dtype}, device={self.device})"
