"""Posed photos on disk -> novel views: model choice, camera files, input fitting, orbits, rendering.

What ``manyview nvs`` does, as functions a Python user can call:

- :func:`load_nvs_model`: a checkpoint / model folder, or the model bundled with manyview;
- :func:`read_cameras`: cameras and their image names from a COLMAP model, a transforms.json or a dataset folder;
- :func:`load_posed_inputs`: images resized to cover S x S and centre-cropped (as the models were trained), with
  their cameras matched by file name and moved onto the crops;
- :func:`fit_cameras`: the same resize-and-crop applied to cameras alone (targets);
- :func:`orbit_cameras`: N cameras on a circle through the inputs' mean centre, looking at the scene centre;
- :func:`render_views`: pose normalisation from the inputs, then the model.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.geometry.transforms import rigid
from manyview.models.lvsm import VARIANT_NAMES, LVSMBase, pose_normalization
from manyview.scene import Cameras, Views

ModelChoice = Literal["auto", "lvsm", "efficient-lvsm"]
# inside the package: config.json + model.safetensors of each bundled model, when this installation ships them
# 'auto' takes the first shipped one: the bundled LVSM renders better than the bundled Efficient-LVSM trained for the
# same steps (bench/README.md), and at 32 x 32 both take milliseconds
BUNDLED: dict[str, str] = {"lvsm": "assets/lvsm_bundled", "efficient-lvsm": "assets/efficient_lvsm_bundled"}
_FAMILY = {"decoder_only": "lvsm", "encoder_decoder": "lvsm", "efficient": "efficient-lvsm"}


# --------------------------------------------------------------------------------------------- models
def bundled_model_dir(variant: str) -> Path | None:
    """The bundled model folder of ``variant`` ('lvsm' / 'efficient-lvsm'), or None when not shipped."""
    path = Path(str(resources.files("manyview").joinpath(BUNDLED[variant])))
    return path if (path / "config.json").is_file() and (path / "model.safetensors").is_file() else None


def load_nvs_model(weights: str | os.PathLike | None = None, model: ModelChoice = "auto",
                   device: str | torch.device = "cpu") -> tuple[LVSMBase, str]:
    """-> (model in eval mode, a description of where its weights came from).

    ``weights``: a model folder (config.json + model.safetensors), a released ``.pt`` / ``.safetensors``
    checkpoint, or a Hugging Face repo id; None takes the bundled model (LVSM first under 'auto').
    ``model`` names the family the checkpoint must belong to ('lvsm' covers decoder-only and encoder-decoder).
    """
    from manyview.models.lvsm_weights import load_lvsm

    if model not in ("auto", *BUNDLED):
        raise ManyviewError(f"unknown model {model!r}; expected auto, lvsm or efficient-lvsm")
    if weights is None:
        for variant in ([model] if model != "auto" else list(BUNDLED)):
            folder = bundled_model_dir(variant)
            if folder is not None:
                return load_lvsm(folder, device=device), f"bundled:{Path(BUNDLED[variant]).name}"
        what = f"no bundled {model} model" if model != "auto" else "no bundled LVSM model"
        raise ManyviewError(f"{what} in this installation; pass --weights PATH (a model folder with config.json and "
                            "model.safetensors, a released .pt / .safetensors checkpoint, or a Hugging Face repo id)")
    from manyview.hub import resolve

    path = resolve(weights)
    net = load_lvsm(path, device=device)
    family = _FAMILY[net.variant]
    if model != "auto" and family != model:
        raise ManyviewError(f"this is an {VARIANT_NAMES[net.variant]} checkpoint but --model {model} was asked for; "
                            f"pass --model {family} (or auto)", path)
    return net, str(weights)


# --------------------------------------------------------------------------------------------- cameras on disk
def read_cameras(path: str | os.PathLike) -> tuple[Cameras, list[str]]:
    """Cameras (N,) at their files' sizes and their image names, from a COLMAP model folder, a transforms.json,
    or a dataset folder holding either (COLMAP first)."""
    from manyview.io.colmap import find_colmap_model, read_colmap
    from manyview.io.transforms_json import parse_transforms_json

    p = Path(path)
    if not p.exists():
        raise ManyviewError("camera file or folder not found", p)
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise ManyviewError("expected a transforms.json, a COLMAP model folder or a dataset folder", p)
        tj = parse_transforms_json(p)
        return tj.cameras.to(torch.float64), tj.names
    model_dir = find_colmap_model(p)
    if model_dir is not None:
        model = read_colmap(model_dir, dtype=torch.float64)
        return model.cameras, model.names
    for name in ("transforms.json", "transforms_train.json"):
        if (p / name).is_file():
            tj = parse_transforms_json(p / name)
            return tj.cameras.to(torch.float64), tj.names
    raise ManyviewError("no cameras here: expected a COLMAP model (sparse/0), a transforms.json or a manyview dataset",
                        p)


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


def fit_cameras(cameras: Cameras, size: int) -> Cameras:
    """Cameras (N,) of their own image sizes -> cameras of those images scaled to cover size x size and
    centre-cropped, exactly as :func:`load_posed_inputs` treats image files."""
    from manyview.io.images import ImageTransform, plan_resize_and_crop

    out = []
    for i in range(len(cameras)):
        h, w = (int(x) for x in cameras.image_size[i])
        resized, crop = plan_resize_and_crop((h, w), (size, size), "center")
        out.append(ImageTransform("", (h, w), resized, crop).apply(cameras[i:i + 1]))
    return Cameras.cat(out)


def load_posed_inputs(images: Sequence[str | os.PathLike], cameras_path: str | os.PathLike,
                      size: int) -> tuple[Views, bool]:
    """Image files and a camera source -> (Views (N, 3, size, size) with matched cameras, matched_by_name)."""
    from manyview.io.images import apply_to_cameras, load_image_files

    if not images:
        raise ManyviewError("no input images given: LVSM needs at least one posed view")
    cams, names = read_cameras(cameras_path)
    paths = [Path(p) for p in images]
    matched, by_name = match_cameras([p.name for p in paths], cams, names, cameras_path)
    views, transforms = load_image_files(paths, _square_policy(size))
    # a camera whose image has another aspect ratio is an error naming the image (ImageTransform.apply)
    return Views(images=views.images, cameras=apply_to_cameras(matched, transforms).to(torch.float32),
                 names=views.names), by_name


# --------------------------------------------------------------------------------------------- orbits
def scene_center(cameras: Cameras) -> Tensor:
    """The point the cameras look at: the least-squares closest point to their optical axes (3,).

    When the axes are (nearly) parallel, or the point would lie behind a camera, it is the mean centre moved
    along the mean viewing direction by the cameras' spread (1 unit for a single camera)."""
    c2w = cameras.c2w.double().reshape(-1, 4, 4)
    centers, forward = c2w[:, :3, 3], F.normalize(c2w[:, :3, 2], dim=-1)
    proj = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]  # (V, 3, 3)
    A, b = proj.sum(0), (proj @ centers[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if len(c2w) > 1 and eig[0] > 0.02 * len(c2w):
        point = torch.linalg.solve(A, b)
        if bool((((point - centers) * forward).sum(-1) > 0).all()):
            return point
    mean = centers.mean(0)
    spread = (centers - mean).norm(dim=-1).max()
    reach = 2 * spread if spread > 0 else torch.tensor(1.0, dtype=torch.float64)
    return mean + F.normalize(forward.mean(0), dim=-1) * reach


def up_direction(cameras: Cameras) -> Tensor:
    """The world's vertical (3,) as the cameras see it.

    Photos are taken without roll, so every camera's x axis is horizontal: the vertical is the direction most
    orthogonal to all x axes (exact for roll-free cameras whose x axes span the horizontal plane), signed like the
    cameras' mean up (-y) axis. When the x axes are (nearly) parallel that direction is ambiguous, and the mean up
    axis itself is used."""
    c2w = cameras.c2w.double().reshape(-1, 4, 4)
    mean_up = F.normalize(-c2w[:, :3, 1].mean(0), dim=0)
    right = c2w[:, :3, 0]
    evals, evecs = torch.linalg.eigh(right.T @ right)
    if evals[1] < 0.05 * evals[2]:
        return mean_up
    up = evecs[:, 0]
    return up if up @ mean_up >= 0 else -up


def orbit_cameras(cameras: Cameras, n: int) -> Cameras:
    """``n`` cameras on a circle around the vertical axis (:func:`up_direction`) through :func:`scene_center`,
    passing through the inputs' mean centre (the first camera sits there), each looking at the scene centre without
    roll. Intrinsics and image size are the first input camera's."""
    if n < 1:
        raise ManyviewError(f"an orbit needs at least one camera, got {n}")
    c2w = cameras.c2w.double().reshape(-1, 4, 4)
    up = up_direction(cameras)
    center = scene_center(cameras)
    mean = c2w[:, :3, 3].mean(0)
    axis_point = center + up * ((mean - center) @ up)
    radial = mean - axis_point
    radius = radial.norm()
    if radius < 1e-6 * max(1.0, float((mean - center).norm())):
        raise ManyviewError("the inputs' mean centre lies on the vertical axis through the scene centre (looking "
                            "straight down or up): there is no circle to orbit on")
    e1 = radial / radius
    e2 = torch.linalg.cross(up, e1)
    theta = torch.arange(n, dtype=torch.float64) * (2 * torch.pi / n)
    eye = axis_point + radius * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)
    f = cameras.fxfycxcy.reshape(-1, 4)[0].double()
    size = cameras.image_size.reshape(-1, 2)[0]
    return Cameras.look_at(eye, center.expand(n, 3), up, f.expand(n, 4), size.expand(n, 2)).to(cameras.dtype)


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
    T_scaled = rigid(T[:3, :3], scale * T[:3, 3])

    def norm(c: Cameras) -> Cameras:
        return c.to(torch.float64).transform(T_scaled, scale).to(torch.float32)

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.render(views.images[None].to(device), norm(views.cameras)[None].to(device),
                           norm(targets)[None].to(device), target_batch_size=target_batch_size)
    return out[0].float().cpu()


__all__ = ["BUNDLED", "bundled_model_dir", "fit_cameras", "load_nvs_model", "load_posed_inputs", "match_cameras",
           "orbit_cameras", "read_cameras", "render_views", "scene_center", "up_direction"]
