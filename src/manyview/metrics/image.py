"""Image metrics: PSNR, SSIM (scikit-image's Gaussian variant) and LPIPS (when its weights are on disk).

Images are (..., 3, H, W) float tensors; every function returns one value per image, shape (...).

SSIM follows ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=R, channel_axis=...)``: an 11-tap normalised Gaussian (radius
int(3.5 * 1.5 + 0.5) = 5), K1 = 0.01, K2 = 0.03, the SSIM map averaged over pixels at least 5 from the border
(so only a 'valid' convolution is needed), then over channels.

LPIPS (Zhang et al. 2018, the ``lpips`` package v0.1) needs weights that are not shipped and cannot be
downloaded here. Point ``MANYVIEW_LPIPS_WEIGHTS`` (or the ``weights`` argument) at either
- a directory holding the LPIPS linear layers (``alex.pth`` / ``vgg.pth`` from the lpips package, keys
  ``lin{0..4}.model.1.weight``) and torchvision's ImageNet backbone (``alexnet-*.pth`` / ``vgg16-*.pth``, keys
  ``features.{i}.weight|bias``), or
- one ``.safetensors`` file holding both key sets.
Files are read and checked by the one weights loader (:mod:`manyview.hub`: safetensors or
``torch.load(weights_only=True)``, strict keys and shapes). Without weights ``lpips_available()`` is False and
``lpips()`` raises ``ManyviewError``; callers report "n/a".
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.hub import load_weights, read_state_dict

LPIPS_ENV = "MANYVIEW_LPIPS_WEIGHTS"
LpipsNet = Literal["alex", "vgg"]


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() < 3:
        raise ManyviewError(f"images must share one (..., C, H, W) shape, "
                            f"got {tuple(pred.shape)} and {tuple(gt.shape)}")


def psnr(pred: Tensor, gt: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (...); inf for identical images."""
    _check_pair(pred, gt)
    mse = (pred.double() - gt.double()).square().flatten(-3).mean(-1)
    return (10 * torch.log10(data_range**2 / mse)).to(pred.dtype)


def _gaussian_kernel(sigma: float, truncate: float, dtype, device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _band_matrix(n: int, k: Tensor) -> Tensor:
    """(n - len(k) + 1, n) matrix whose rows are ``k`` shifted by one: ``band @ v`` is the valid 1-D correlation."""
    rows = n - k.numel() + 1
    band = torch.zeros(rows, n, dtype=k.dtype, device=k.device)
    cols = torch.arange(rows, device=k.device)[:, None] + torch.arange(k.numel(), device=k.device)
    return band.scatter_(1, cols, k.expand(rows, -1))


def gaussian_blur_valid(images: Tensor, k: Tensor) -> Tensor:
    """Separable blur of (..., H, W) with the 1-D kernel ``k``, valid region only: (..., H - K + 1, W - K + 1).

    Two matrix products with banded matrices. On a CPU this is several times faster than ``conv2d`` with a
    single-channel kernel, forward and especially backward, which matters because SSIM is in the splat training
    loss. :func:`gaussian_blur_valid_reference` is the convolution it must equal."""
    h, w = images.shape[-2:]
    return _band_matrix(h, k) @ images @ _band_matrix(w, k).transpose(0, 1)


def gaussian_blur_valid_reference(images: Tensor, k: Tensor) -> Tensor:
    """The same blur as two ``conv2d`` passes (the reference :func:`gaussian_blur_valid` is tested against)."""
    h, w = images.shape[-2:]
    x = images.reshape(-1, 1, h, w)
    out = F.conv2d(F.conv2d(x, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))
    return out.reshape(images.shape[:-2] + out.shape[-2:])


def ssim(pred: Tensor, gt: Tensor, data_range: float = 1.0, sigma: float = 1.5, K1: float = 0.01,
         K2: float = 0.03, sample_covariance: bool = False) -> Tensor:
    """Mean structural similarity per image (...), as scikit-image computes it (see module docstring).

    ``sample_covariance=True`` matches scikit-image's default ``use_sample_covariance=True`` instead: (co)variances
    scaled by n / (n - 1) with n = 11 x 11, which is what pixelSplat / MVSplat / LVSM evaluations call."""
    _check_pair(pred, gt)
    c, h, w = pred.shape[-3:]
    k = _gaussian_kernel(sigma, 3.5, pred.dtype, pred.device)
    if min(h, w) < k.numel():
        raise ManyviewError(f"SSIM needs images of at least {k.numel()}x{k.numel()} pixels, got {h}x{w}")
    x, y = pred.reshape(-1, 1, h, w), gt.reshape(-1, 1, h, w)
    stack = gaussian_blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), k).reshape(x.shape[0], 5, -1)
    ux, uy, uxx, uyy, uxy = stack.unbind(1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    if sample_covariance:
        n = k.numel() ** 2
        vx, vy, vxy = (v * (n / (n - 1)) for v in (vx, vy, vxy))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(-1).view(pred.shape[:-3] + (c,)).mean(-1)


# ------------------------------------------------------------------------------------------------- LPIPS
# Backbone layouts as torchvision builds ``features`` (so its state-dict keys load as they are):
# ("C", in, out, kernel, stride, padding) convolution + ReLU occupy two indices, ("M",) a 3x3/2 (AlexNet) or
# 2x2/2 (VGG) max-pool one. LPIPS taps the ReLU outputs after the listed feature indices.
_ALEX = [("C", 3, 64, 11, 4, 2), ("M",), ("C", 64, 192, 5, 1, 2), ("M",), ("C", 192, 384, 3, 1, 1),
         ("C", 384, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1)]
_VGG = [("C", 3, 64, 3, 1, 1), ("C", 64, 64, 3, 1, 1), ("M",), ("C", 64, 128, 3, 1, 1), ("C", 128, 128, 3, 1, 1),
        ("M",), ("C", 128, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1), ("M",),
        ("C", 256, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("M",),
        ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1), ("C", 512, 512, 3, 1, 1)]
_NETS = {"alex": (_ALEX, (1, 4, 7, 9, 11), 3), "vgg": (_VGG, (3, 8, 15, 22, 29), 2)}
_BACKBONE_GLOB = {"alex": "alexnet*", "vgg": "vgg16*"}


class _LPIPS(nn.Module):
    """LPIPS v0.1: scaled input -> backbone ReLU taps -> unit-normalised channels -> squared difference ->
    learned 1x1 weights -> spatial mean, summed over the five taps."""

    def __init__(self, net: LpipsNet):
        super().__init__()
        layout, taps, pool = _NETS[net]
        layers: list[nn.Module] = []
        with torch.device("meta"):  # parameters are placeholders until the weights are assigned
            for spec in layout:
                if spec[0] == "C":
                    layers += [nn.Conv2d(spec[1], spec[2], spec[3], spec[4], spec[5]), nn.ReLU()]
                else:
                    layers.append(nn.MaxPool2d(pool, 2))
            chans = [layers[t - 1].out_channels for t in taps]
            self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in chans)
        self.features = nn.Sequential(*layers)
        self.taps = taps
        # constants of LPIPS, not part of its weight files
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] -> (B,)
        fa = self._taps((a - self.shift) / self.scale)
        fb = self._taps((b - self.shift) / self.scale)
        return sum(lin((x - y).square()).mean((1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb))


def _weights_location(weights: str | os.PathLike | None) -> Path | None:
    loc = weights if weights is not None else os.environ.get(LPIPS_ENV)
    return None if not loc else Path(loc)


def _gather_state(loc: Path, net: LpipsNet) -> dict[str, Tensor]:
    """Combined state dict {features.*, lin{k}.model.1.weight} from a file or a directory."""
    if loc.is_file():
        return read_state_dict(loc)[0]
    if not loc.is_dir():
        raise ManyviewError(f"LPIPS weights not found; set {LPIPS_ENV} to a directory with {net}.pth (lpips) and "
                            f"torchvision's {_BACKBONE_GLOB[net]}.pth, or to one .safetensors with both", loc)
    lin = loc / f"{net}.pth"
    backbones = sorted(p for p in loc.glob(_BACKBONE_GLOB[net]) if p.suffix in (".pth", ".safetensors"))
    if not lin.is_file() or not backbones:
        raise ManyviewError(f"LPIPS weights incomplete: need {net}.pth (lpips linear layers) and torchvision's "
                            f"{_BACKBONE_GLOB[net]}.pth backbone in this directory", loc)
    state = {k: v for k, v in read_state_dict(backbones[0])[0].items() if k.startswith("features.")}
    state.update(read_state_dict(lin)[0])
    return state


@functools.lru_cache(maxsize=4)
def _load_lpips(loc: str, net: LpipsNet) -> _LPIPS:
    model = _LPIPS(net)
    state = _gather_state(Path(loc), net)
    mapped = {}
    for key, value in state.items():  # a torchvision classifier beside the backbone is not LPIPS: left out
        if key.startswith("features."):
            mapped[key] = value.float()
        elif key.startswith("lin") and key.endswith(".model.1.weight"):
            mapped[f"lins.{key[3:key.index('.')]}.weight"] = value.float()
    load_weights(model, mapped, path=loc, assign=True, what=f"LPIPS ({net})")
    return model.eval().requires_grad_(False)


def lpips_available(net: LpipsNet = "alex", weights: str | os.PathLike | None = None) -> bool:
    """True when LPIPS weights for ``net`` are found and load."""
    loc = _weights_location(weights)
    if loc is None:
        return False
    try:
        _load_lpips(str(loc), net)
    except ManyviewError:
        return False
    return True


def lpips(pred: Tensor, gt: Tensor, net: LpipsNet = "alex", weights: str | os.PathLike | None = None) -> Tensor:
    """LPIPS distance per image (...) for images in [0, 1]; lower is more similar."""
    _check_pair(pred, gt)
    if net not in _NETS:
        raise ManyviewError(f"unknown LPIPS network {net!r} (expected 'alex' or 'vgg')")
    loc = _weights_location(weights)
    if loc is None:
        raise ManyviewError(f"LPIPS weights are missing: set {LPIPS_ENV} (or pass weights=) to a directory holding "
                            f"the lpips package's {net}.pth and torchvision's {_BACKBONE_GLOB[net]}.pth, or to one "
                            f".safetensors with both")
    model = _load_lpips(str(loc), net).to(pred.device)
    a = pred.reshape(-1, *pred.shape[-3:]).float() * 2 - 1
    b = gt.reshape(-1, *gt.shape[-3:]).float() * 2 - 1
    with torch.no_grad():
        return model(a, b).view(pred.shape[:-3])


__all__ = ["LPIPS_ENV", "lpips", "lpips_available", "psnr", "ssim"]
