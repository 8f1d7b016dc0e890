"""Per-photo exposure: an affine colour transform for each training image (3DGS's ``exposure``, gsplat's
per-image appearance in its simplest form).

Photos of one scene rarely share one exposure and white balance; a splat trained on them as they are bakes the
differences into view-dependent colour and floaters, which then show in every novel view. Here each training
view ``i`` owns a 3 x 4 matrix ``[A_i | b_i]`` (identity at the start) and the loss compares
``A_i rgb + b_i`` with its photo, so the Gaussians keep one scene-referred colour.

A view without a learned transform (a held-out photo, an orbit frame) is rendered with the identity. Evaluation
reports PSNR of that plain render, and also with the held-out photo's own transform fitted to the photo by least
squares (:func:`fit_affine_colour`, 12 numbers per image, the protocol's "exposure fitted on the held-out image"),
which measures the geometry and colours apart from the exposure the photo happened to get.
"""

from __future__ import annotations

import torch
from torch import Tensor


def identity_transforms(n: int, dtype=torch.float32) -> Tensor:
    """(n, 3, 4) identity colour transforms ``[I | 0]``."""
    eye = torch.zeros(3, 4, dtype=dtype)
    eye[:, :3] = torch.eye(3, dtype=dtype)
    return eye.expand(n, 3, 4).clone()


def apply_colour_transform(rgb: Tensor, transform: Tensor) -> Tensor:
    """``A rgb + b`` per pixel of a (..., 3, H, W) image with a (..., 3, 4) transform ``[A | b]``."""
    a, b = transform[..., :3], transform[..., 3]
    return torch.einsum("...ij,...jhw->...ihw", a, rgb) + b[..., :, None, None]


def apply_colour_transform_reference(rgb: Tensor, transform: Tensor) -> Tensor:
    """The same as :func:`apply_colour_transform` for one (3, H, W) image, pixel by pixel (the test's reference)."""
    out = torch.empty_like(rgb)
    for y in range(rgb.shape[1]):
        for x in range(rgb.shape[2]):
            out[:, y, x] = transform[:, :3] @ rgb[:, y, x] + transform[:, 3]
    return out


def fit_affine_colour(pred: Tensor, target: Tensor) -> Tensor:
    """(3, 4) ``[A | b]`` minimising ``|A pred + b - target|^2`` over the pixels of one (3, H, W) image pair
    (least squares in float64)."""
    x = torch.cat([pred.reshape(3, -1).T.double(), torch.ones(pred[0].numel(), 1, dtype=torch.float64,
                                                               device=pred.device)], dim=1)
    solution = torch.linalg.lstsq(x, target.reshape(3, -1).T.double(), driver="gelsd").solution  # (4, 3)
    return solution.T.to(pred.dtype)


def exposure_fitted(pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` (N, 3, H, W) with each image's affine colour transform fitted to ``target``, clamped to [0, 1]."""
    return torch.stack([apply_colour_transform(p, fit_affine_colour(p, t)).clamp(0, 1)
                        for p, t in zip(pred, target)])


GREY = 0.5  # the learned transforms act about mid-grey: A (rgb - 0.5) + 0.5 + c


class ExposureCompensation(torch.nn.Module):
    """One learnable colour transform per view (``n`` views, identity at the start); ``forward(rgb, i)`` applies
    view ``i``'s.

    Each view's parameter is ``[A | c]`` acting about mid-grey, ``A (rgb - 0.5) + 0.5 + c``: the same affine maps
    as ``[A | b]``, but the gain and the offset then pull on the loss almost independently (about black, every
    gain change also shifts the mean, and the optimiser crawls along that coupling). Each view's parameter is its
    own tensor, so that an optimiser per view moves only the view of the step (one Adam over all of them would keep
    moving the others on their momentum). Views never trained keep the identity."""

    def __init__(self, n: int):
        super().__init__()
        self.per_view = torch.nn.ParameterList([torch.nn.Parameter(t) for t in identity_transforms(n)])

    @property
    def transforms(self) -> Tensor:
        """(n, 3, 4) the current transforms as ``[A | b]``: ``A rgb + b`` (:func:`apply_colour_transform`)."""
        p = torch.stack(list(self.per_view))
        a = p[..., :3]
        b = p[..., 3] + GREY - GREY * a.sum(-1)
        return torch.cat([a, b[..., None]], dim=-1)

    def forward(self, rgb: Tensor, i: int) -> Tensor:
        p = self.per_view[i]
        return apply_colour_transform(rgb - GREY, p) + GREY


__all__ = ["ExposureCompensation", "apply_colour_transform", "apply_colour_transform_reference", "exposure_fitted",
           "fit_affine_colour", "identity_transforms"]
