"""Posed photos on disk -> novel views: model choice, posed inputs, rendering.

What ``manyview nvs`` does, as functions a Python user can call:

- :func:`load_nvs_model`: a checkpoint / model folder, or the model bundled with manyview;
- :func:`load_posed_inputs`: images resized to cover S x S and centre-cropped (as the models were trained), with
  their cameras (:func:`manyview.io.dataset.read_cameras`) matched by file name and moved onto the crops;
- :func:`render_views`: pose normalisation from the inputs (:mod:`manyview.geometry.poses`), then the model.

Targets come from a camera file brought to the same size (:func:`manyview.scene.resize_cameras`) or from an orbit
around the inputs (:meth:`manyview.scene.Cameras.orbit`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.poses import apply_pose_normalization, pose_normalization
from manyview.models.lvsm_base import LVSMBase
from manyview.models.lvsm_config import VARIANT_NAMES
from manyview.scene import Cameras, Views

ModelChoice = Literal["auto", "lvsm", "efficient-lvsm"]
# the bundled families in the order 'auto' tries them: the bundled LVSM renders better than the bundled
# Efficient-LVSM trained for the same steps (bench/README.md), and at 32 x 32 both take milliseconds
NVS_FAMILIES: tuple[str, ...] = ("lvsm", "efficient-lvsm")
_FAMILY = {"decoder_only": "lvsm", "encoder_decoder": "lvsm", "efficient": "efficient-lvsm"}


# --------------------------------------------------------------------------------------------- models
def load_nvs_model(weights: str | os.PathLike | None = None, model: ModelChoice = "auto",
                   device: str | torch.device = "cpu") -> tuple[LVSMBase, str]:
    """-> (model in eval mode, a description of where its weights came from).

    ``weights``: a model folder (config.json + model.safetensors), a released ``.pt`` / ``.safetensors``
    checkpoint, or a Hugging Face repo id; None takes the bundled model (LVSM first under 'auto').
    ``model`` names the family the checkpoint must belong to ('lvsm' covers decoder-only and encoder-decoder).
    """
    from manyview import assets
    from manyview.models.lvsm_family import load_lvsm

    if model not in ("auto", *NVS_FAMILIES):
        raise ManyviewError(f"unknown model {model!r}; expected auto, lvsm or efficient-lvsm")
    if weights is None:
        for variant in ([model] if model != "auto" else NVS_FAMILIES):
            folder = assets.bundled_model_dir(variant)
            if folder is not None:
                return load_lvsm(folder, device=device), f"bundled:{folder.name}"
        what = f"no bundled {model} model" if model != "auto" else "no bundled LVSM model"
        raise ManyviewError(f"{what} in this installation; pass --weights PATH (a model folder with config.json and "
                            "model.safetensors, a released .pt / .safetensors checkpoint, or a Hugging Face repo id)")
    net = load_lvsm(weights, device=device)
    family = _FAMILY[net.variant]
    if model != "auto" and family != model:
        raise ManyviewError(f"this is an {VARIANT_NAMES[net.variant]} checkpoint but --model {model} was asked for; "
                            f"pass --model {family} (or auto)", weights)
    return net, str(weights)


# --------------------------------------------------------------------------------------------- posed inputs
def match_cameras(image_names: Sequence[str], cameras: Cameras, camera_names: Sequence[str],
                  source: str | os.PathLike) -> tuple[Cameras, bool]:
    """The camera of each image, matched by file stem -> (Cameras (len(image_names),), matched_by_name).

    When no image name matches any camera name and the counts agree, cameras are taken in order (False returned,
    so the caller can say so); any other mismatch is an error naming the first unmatched image.
    """
    stems = [Path(n).stem for n in camera_names]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise ManyviewError(f"two cameras share the image name {dup!r}; cannot match images to cameras", source)
    index = {s: i for i, s in enumerate(stems)}
    wanted = [Path(n).stem for n in image_names]
    hits = [index.get(s) for s in wanted]
    if all(h is not None for h in hits):
        return cameras[torch.tensor(hits)], True
    if all(h is None for h in hits) and len(image_names) == len(camera_names):
        return cameras, False
    if len(image_names) != len(camera_names) and all(h is None for h in hits):
        raise ManyviewError(f"{len(camera_names)} cameras for {len(image_names)} images, and no image name matches a "
                            f"camera name", source)
    missing = next(n for n, h in zip(image_names, hits) if h is None)
    raise ManyviewError(f"no camera for image {missing!r} ({sum(h is None for h in hits)} of {len(image_names)} "
                        f"images have none)", source)


def _square_policy(size: int):
    from manyview.io.images import ImageLoadPolicy

    return ImageLoadPolicy(size=(size, size), crop="center", resample="lanczos", exif_orientation=False)


def load_posed_inputs(images: Sequence[str | os.PathLike], cameras_path: str | os.PathLike,
                      size: int) -> tuple[Views, bool]:
    """Image files and a camera source -> (Views (N, 3, size, size) with matched cameras, matched_by_name)."""
    from manyview.io.dataset import read_cameras
    from manyview.io.images import load_image_files
    from manyview.scene import apply_to_cameras

    if not images:
        raise ManyviewError("no input images given: LVSM needs at least one posed view")
    paths = [Path(p) for p in images]
    # images first: an unreadable file is named as such, not reported as a camera count that does not match
    views, transforms = load_image_files(paths, _square_policy(size))
    cams, names = read_cameras(cameras_path)
    matched, by_name = match_cameras([p.name for p in paths], cams, names, cameras_path)
    # a camera whose image has another aspect ratio is an error naming the image (ImageTransform.apply)
    return Views(images=views.images, cameras=apply_to_cameras(matched, transforms).to(torch.float32),
                 names=views.names), by_name


# --------------------------------------------------------------------------------------------- rendering
def render_views(model: LVSMBase, views: Views, targets: Cameras, target_batch_size: int | None = 4) -> Tensor:
    """Input Views (N, 3, S, S) with cameras and target Cameras (T,) of one size -> renders (T, 3, H, W) in [0, 1].

    Poses are normalised as the released loaders do, with the similarity computed from the input cameras alone
    (so any number of targets, e.g. a whole orbit, sees the same frame); the model runs under no_grad on its
    device, ``target_batch_size`` targets at a time.
    """
    if views.cameras is None or len(views) == 0:
        raise ManyviewError("no posed input views given")
    for what, cams in (("input", views.cameras), ("target", targets)):
        if not (torch.isfinite(cams.c2w).all() and torch.isfinite(cams.fxfycxcy).all()):
            raise ManyviewError(f"{what} cameras contain NaN or infinite values")
    T, scale = pose_normalization(views.cameras.c2w.double(), model.config.scene_scale_factor)

    def norm(c: Cameras) -> Cameras:
        return c.with_poses(apply_pose_normalization(c.c2w.double(), T, scale)).to(torch.float32)

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.render(views.images[None].to(device), norm(views.cameras)[None].to(device),
                           norm(targets)[None].to(device), target_batch_size=target_batch_size)
    return out[0].float().cpu()


__all__ = ["NVS_FAMILIES", "load_nvs_model", "load_posed_inputs", "match_cameras", "render_views"]
