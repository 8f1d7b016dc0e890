"""The VGG-19 feature ("perceptual") loss that the released LVSM / Efficient-LVSM models were trained with.

It is not LPIPS (reference/lvsm.md §1.4): a VGG-19 with its max-pools replaced by average pools, fed
``255 * img - [123.68, 116.779, 103.939]``; the loss is the L1 distance of the pixels and of the ReLU outputs
after conv1_2, conv2_2, conv3_2, conv4_2 and conv5_2, weighted 1, 1/2.6, 1/4.8, 1/3.7, 1/5.6, 10/1.5, summed and
divided by 255.

The ImageNet weights are not shipped and cannot be downloaded here; they are read from a local file named by the
``weights`` argument or ``MANYVIEW_VGG19_WEIGHTS``:

- MatConvNet's ``imagenet-vgg-verydeep-19.mat`` (what the official code downloads), read with ``scipy.io.loadmat``:
  layers ``conv1_1`` ... ``conv5_2``, kernels (kh, kw, in, out); it expects the mean-subtracted 0-255 input above;
- torchvision's ``vgg19-*.pth`` or a ``.safetensors`` with the same keys ``features.{i}.weight|bias``, read and
  checked by the one weights loader (:mod:`manyview.hub`: safetensors or ``torch.load(weights_only=True)``, strict
  keys and shapes); those weights expect ImageNet-standardised [0, 1] input, so the network is fed that instead
  (the pixel term stays on the 0-255 scale).

Without weights :func:`perceptual_loss_or_none` warns and returns None: the caller trains with MSE alone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.hub import load_weights, read_state_dict

VGG19_ENV = "MANYVIEW_VGG19_WEIGHTS"
InputMode = Literal["matconvnet", "torchvision"]

# VGG-19 ``features`` up to relu5_2, indexed as torchvision builds it: conv + ReLU take two indices, a pool one.
_CONV = {0: ("conv1_1", 3, 64), 2: ("conv1_2", 64, 64), 5: ("conv2_1", 64, 128), 7: ("conv2_2", 128, 128),
         10: ("conv3_1", 128, 256), 12: ("conv3_2", 256, 256), 14: ("conv3_3", 256, 256), 16: ("conv3_4", 256, 256),
         19: ("conv4_1", 256, 512), 21: ("conv4_2", 512, 512), 23: ("conv4_3", 512, 512), 25: ("conv4_4", 512, 512),
         28: ("conv5_1", 512, 512), 30: ("conv5_2", 512, 512)}
_POOL = (4, 9, 18, 27)
_DEPTH = 32  # modules 0..31: the last tap is relu5_2 (index 31)
_TAPS = (3, 8, 13, 22, 31)  # relu1_2, relu2_2, relu3_2, relu4_2, relu5_2
_TAP_WEIGHTS = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)
_CAFFE_MEAN = (123.68, 116.779, 103.939)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """Randomly initialised VGG-19 convolutions up to relu5_2, average pools instead of max pools."""
    layers: list[nn.Module] = []
    for i in range(_DEPTH):
        if i in _CONV:
            _, c_in, c_out = _CONV[i]
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        elif i in _POOL:
            layers.append(nn.AvgPool2d(2, 2))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def required_keys() -> list[str]:
    return [f"features.{i}.{p}" for i in _CONV for p in ("weight", "bias")]


# --------------------------------------------------------------------------------------------- weight files
def _unwrap(x):
    """Peel the 1-element object arrays ``loadmat`` wraps MATLAB cells and structs in."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.ravel()[0]
    return x


def _read_matconvnet(path: Path) -> dict[str, Tensor]:
    """MatConvNet ``layers`` cell array -> torchvision-layout state dict (the conv layers we use)."""
    from scipy.io import loadmat

    try:
        layers = loadmat(str(path))["layers"].ravel()
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise ManyviewError(f"not a MatConvNet VGG-19 file (expected a 'layers' cell array): {e}", path) from None
    by_name = {}
    for layer in layers:
        rec = _unwrap(layer)
        if isinstance(rec, np.ndarray) and rec.dtype.names and "name" in rec.dtype.names:
            rec = rec.ravel()[0]
        if not isinstance(rec, np.void) or not rec.dtype.names or "name" not in rec.dtype.names:
            continue
        name = _unwrap(rec["name"])
        name = str(name.ravel()[0]) if isinstance(name, np.ndarray) and name.size else str(name)
        by_name[name] = rec
    out = {}
    for i, (name, c_in, c_out) in _CONV.items():
        if name not in by_name:
            raise ManyviewError(f"MatConvNet file has no layer {name!r}", path)
        try:
            cell = _unwrap(by_name[name]["weights"]).ravel()
            w, b = np.asarray(cell[0], dtype=np.float32), np.asarray(cell[1], dtype=np.float32)
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise ManyviewError(f"layer {name!r} has no (kernel, bias) weights: {e}", path) from None
        if w.shape != (3, 3, c_in, c_out) or b.size != c_out:
            raise ManyviewError(f"layer {name!r} has kernel {w.shape} and {b.size} biases, expected "
                                f"(3, 3, {c_in}, {c_out}) and {c_out}", path)
        out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        out[f"features.{i}.bias"] = torch.from_numpy(b.reshape(c_out).copy())
    return out


def read_vgg19_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], InputMode]:
    """A VGG-19 weight file -> (state dict of the layers used, the input normalisation those weights expect)."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("VGG-19 weight file not found" if not path.exists() else "not a file", path)
    if path.suffix.lower() == ".mat":
        return _read_matconvnet(path), "matconvnet"
    state, _ = read_state_dict(path)
    # torchvision's file also holds the classifier and the layers after relu5_2: only the ones used are taken,
    # and those must all be there with VGG-19's shapes
    used = {k: state[k].float() for k in required_keys() if k in state}
    with torch.device("meta"):
        shapes = nn.Module()
        shapes.features = vgg19_features()
    load_weights(shapes, used, path=path, assign=True, what="VGG-19 (torchvision layout, conv1_1 ... conv5_2)")
    return used, "torchvision"


# --------------------------------------------------------------------------------------------- the loss
class PerceptualLoss(nn.Module):
    """LVSM's VGG-19 loss between predictions and targets (..., 3, H, W) in [0, 1] -> a scalar.

    The network is frozen; gradients flow to ``pred`` only.
    """

    def __init__(self, state_dict: dict[str, Tensor], input_mode: InputMode = "matconvnet"):
        super().__init__()
        if input_mode not in ("matconvnet", "torchvision"):
            raise ManyviewError(f"unknown VGG input mode {input_mode!r}")
        self.input_mode = input_mode
        self.features = vgg19_features()
        load_weights(self, state_dict, what="the VGG-19 perceptual network")
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("caffe_mean", torch.tensor(_CAFFE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("imagenet_mean", torch.tensor(_IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(_IMAGENET_STD).view(3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # the loss network never changes behaviour

    def taps(self, x: Tensor) -> list[Tensor]:
        """Images (N, 3, H, W) in [0, 1] -> the five ReLU feature maps the loss compares."""
        if self.input_mode == "matconvnet":
            x = x * 255.0 - self.caffe_mean.to(x.dtype)
        else:
            x = (x - self.imagenet_mean.to(x.dtype)) / self.imagenet_std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() < 3 or pred.shape[-3] != 3:
            raise ManyviewError(f"perceptual loss needs two (..., 3, H, W) images of one shape, got "
                                f"{tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:])
        total = F.l1_loss(pred * 255.0, target.to(pred.dtype) * 255.0)
        with torch.no_grad():
            target_taps = self.taps(target.to(pred.dtype))
        for weight, p, t in zip(_TAP_WEIGHTS, self.taps(pred), target_taps):
            total = total + weight * F.l1_loss(p, t)
        return total / 255.0


def weights_location(weights: str | os.PathLike | None = None) -> Path | None:
    """The VGG-19 weight file to use: ``weights`` if given, else ``$MANYVIEW_VGG19_WEIGHTS``, else None."""
    if weights is not None:
        return Path(weights)
    env = os.environ.get(VGG19_ENV)
    return Path(env) if env else None


def load_perceptual_loss(weights: str | os.PathLike | None = None) -> PerceptualLoss:
    """The loss with weights from ``weights`` / ``$MANYVIEW_VGG19_WEIGHTS``; ManyviewError when there are none."""
    loc = weights_location(weights)
    if loc is None:
        raise ManyviewError(f"no VGG-19 weights: set {VGG19_ENV} to imagenet-vgg-verydeep-19.mat (MatConvNet) or a "
                            f"torchvision vgg19 .pth / .safetensors")
    state, mode = read_vgg19_weights(loc)
    return PerceptualLoss(state, mode)


def perceptual_loss_or_none(weights: str | os.PathLike | None = None) -> PerceptualLoss | None:
    """:func:`load_perceptual_loss`, or None with a warning when no weight file is named at all.

    A named file that is missing or broken is still an error: a typo must not silently change the loss.
    """
    if weights_location(weights) is None:
        warnings.warn(f"perceptual loss disabled: no VGG-19 weights (set {VGG19_ENV}); training with MSE alone",
                      stacklevel=2)
        return None
    return load_perceptual_loss(weights)


__all__ = ["PerceptualLoss", "VGG19_ENV", "load_perceptual_loss", "perceptual_loss_or_none", "read_vgg19_weights",
           "required_keys", "vgg19_features", "weights_location"]
