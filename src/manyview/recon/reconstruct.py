"""Images -> :class:`~manyview.scene.Reconstruction` in one call, for Fast3R and for the pairwise baseline.

- :func:`reconstruct` with a :class:`~manyview.models.fast3r.Fast3R`: one forward pass over all views, then
  camera recovery (Weiszfeld focal + PnP) and the confidence-filtered point cloud
  (:func:`manyview.recon.build_reconstruction`).
- :func:`reconstruct_pairwise` with a :class:`~manyview.models.pairwise.PairwiseNet`: the network on every
  ordered pair of a pair graph (``complete`` by default: N (N - 1) pairs), then DUSt3R's global alignment
  (300 Adam iterations by default). :func:`reconstruct` forwards to it when given a pairwise model.

Both record in ``Reconstruction.info``: ``num_views``, ``image_size``, wall time per stage (``timings_s``), peak
memory (``peak_memory``), ``mean_confidence``, ``num_points``, the device and dtype. Peak memory is the increase
over the level at the start of the call (activations, outputs, optimiser state; the model's weights are already
resident) plus the absolute peak (:class:`manyview.profiling.MemoryMeter` says how each is measured).

Inputs: a :class:`~manyview.scene.Views`, an (N, 3, H, W) tensor in [0, 1], or image files / a folder, loaded with
:func:`reconstruction_policy` (the DUSt3R / Fast3R conventions: ``size=512`` scales the long side to 512 and crops
to multiples of 16, every image to the first image's size; ``size=224`` scales the short side to 224 and crops a
centred square). Duplicate images are fine. One image: Fast3R reconstructs it alone (its cameras are the identity
pose and an estimated focal); the pairwise network pairs it with itself, as DUSt3R's demo does, and returns that
one view. Results are on the CPU, in the camera frame of the first (selected) view.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from manyview.device import resolve_device
from manyview.errors import ManyviewError
from manyview.geometry.alignment import percentile_mask
from manyview.profiling import MemoryMeter, StageTimer
from manyview.progress import progress as progress_bar
from manyview.recon.cameras_from_pointmaps import build_reconstruction
from manyview.recon.global_alignment import GlobalAlignmentConfig, ProgressCallback, global_alignment
from manyview.recon.pairs import make_pairs
from manyview.scene import PointCloud, Reconstruction, Views

ImagesLike = Views | Tensor | str | os.PathLike | Sequence[str | os.PathLike]
_DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------- inputs
def reconstruction_policy(size: int = 512, square: bool | None = None, patch_size: int = 16):
    """The image loading policy of DUSt3R / Fast3R: ``square`` (default: when ``size <= 224``, the square crops
    of DUSt3R's 224 models and of manyview's small bundled model) scales the short
    side to ``size`` and crops a centred ``size`` x ``size`` square; otherwise the long side becomes ``size`` and
    the first image's aspect ratio is kept, rounded down to multiples of ``patch_size``. Other images are scaled
    to cover that size and centre-cropped (:class:`manyview.io.images.ImageLoadPolicy`)."""
    from manyview.io.images import ImageLoadPolicy

    if size < patch_size or size % patch_size:
        raise ManyviewError(f"image size {size} must be a positive multiple of the patch size {patch_size}")
    if square if square is not None else size <= 224:
        return ImageLoadPolicy(size=(size, size), patch_multiple=patch_size)
    return ImageLoadPolicy(long_side=size, patch_multiple=patch_size)


def load_inputs(source: ImagesLike, size: int = 512, square: bool | None = None,
                patch_size: int = 16) -> tuple[Tensor, list[str]]:
    """Views, a tensor or image files -> images (N, 3, H, W) float in [0, 1] and their names."""
    if isinstance(source, Views):
        return source.images, list(source.names)
    if isinstance(source, Tensor):
        images = source[None] if source.dim() == 3 else source
        if images.dim() != 4 or images.shape[1] != 3:
            raise ManyviewError(f"images must be (N, 3, H, W), got {tuple(source.shape)}")
        return images, [f"{i:05d}.png" for i in range(images.shape[0])]
    from manyview.io.images import load_images

    if not isinstance(source, (str, os.PathLike)):
        source = [Path(s) for s in source]
        if not source:
            raise ManyviewError("no images given")
    views, _ = load_images(source, reconstruction_policy(size, square, patch_size))
    return views.images, list(views.names)


def select_views(num_views: int, max_views: int | None) -> list[int]:
    """``max_views`` evenly spaced view indices (first and last kept), or all views."""
    if max_views is None or num_views <= max_views:
        return list(range(num_views))
    if max_views < 1:
        raise ManyviewError(f"max_views must be >= 1, got {max_views}")
    if max_views == 1:
        return [0]
    return torch.linspace(0, num_views - 1, max_views).round().long().tolist()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Autocast dtype: None / 'float32' = full precision; 'bfloat16' / 'float16' (or torch dtypes)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return None if dtype in (None, torch.float32) else dtype
    if str(dtype) not in _DTYPES:
        raise ManyviewError(f"unknown dtype {dtype!r}; choose from float32, bfloat16, float16")
    return _DTYPES[str(dtype)]


def _prepare(views_or_images: ImagesLike, model, max_views: int | None, size: int, square: bool | None):
    images, names = load_inputs(views_or_images, size, square, model.patch_size)
    if images.shape[0] == 0:
        raise ManyviewError("no images given")
    p = model.patch_size
    if images.shape[-2] % p or images.shape[-1] % p:
        raise ManyviewError(f"image size {images.shape[-2]}x{images.shape[-1]} is not a multiple of the patch size "
                            f"{p}; load the images with manyview.recon.reconstruction_policy (or pass file paths)")
    if not images.is_floating_point():
        raise ManyviewError(f"images must be float in [0, 1], got {images.dtype}")
    chosen = select_views(images.shape[0], max_views)
    if len(chosen) < images.shape[0]:
        images, names = images[chosen], [names[i] for i in chosen]
    return images.float(), names, chosen


def _common_info(method: str, model, images: Tensor, chosen: list[int], device, dtype, stages: StageTimer,
                 meter: MemoryMeter, total: float, rec: Reconstruction) -> dict:
    return {
        "method": method,
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_views": int(images.shape[0]),
        "selected_views": chosen,
        "image_size": [int(images.shape[-2]), int(images.shape[-1])],
        "device": str(device),
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "timings_s": {**{k: round(v, 6) for k, v in stages.times.items()}, "total": round(total, 6)},
        "peak_memory": meter.as_dict(),
        "mean_confidence": float(rec.confidences.float().mean()),
        "num_points": len(rec.points),
    }


# --------------------------------------------------------------------------------------------- reconstruct
def reconstruct(views_or_images: ImagesLike, model, *, max_views: int | None = None,
                device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                image_index_seed: int | None = None, min_conf_percentile: float = 10.0, progress: bool = True,
                size: int = 512, square: bool | None = None, **camera_kwargs) -> Reconstruction:
    """Fast3R reconstruction: one forward pass over all views, then camera recovery.

    views_or_images: Views, (N, 3, H, W) in [0, 1] (H, W multiples of 16), or image files / a folder (loaded with
    :func:`reconstruction_policy` ``(size, square)``). ``max_views`` keeps that many evenly spaced views.
    ``device`` cpu / cuda / auto (the model is moved there); ``dtype`` an autocast dtype (e.g. "bfloat16").
    ``image_index_seed``: Fast3R's image-index draw (None: indices in input order). The point cloud keeps each
    view's pixels with confidence >= its ``min_conf_percentile``. ``camera_kwargs`` go to
    :func:`manyview.recon.estimate_cameras`; when the estimated focal is not positive (degenerate pointmaps, e.g.
    an untrained network), DUSt3R's default focal (60 degree field of view) is used and ``info["focal_fallback"]``
    is True. A :class:`~manyview.models.pairwise.PairwiseNet` is forwarded to
    :func:`reconstruct_pairwise` (with its defaults for the pair graph and alignment).
    """
    from manyview.models.fast3r import Fast3R
    from manyview.models.pairwise import PairwiseNet

    if isinstance(model, PairwiseNet):
        if image_index_seed is not None or camera_kwargs:
            raise ManyviewError("image_index_seed and camera options apply to Fast3R, not to the pairwise network")
        return reconstruct_pairwise(views_or_images, model, max_views=max_views, device=device, dtype=dtype,
                                    min_conf_percentile=min_conf_percentile, progress=progress, size=size,
                                    square=square)
    if not isinstance(model, Fast3R):
        raise ManyviewError(f"reconstruct needs a Fast3R or PairwiseNet model, got {type(model).__name__}")
    device, autocast = resolve_device(device), resolve_dtype(dtype)
    images, names, chosen = _prepare(views_or_images, model, max_views, size, square)
    model.to(device)
    stages = StageTimer(device)
    bar = progress_bar(total=2, desc="fast3r", enabled=progress)
    t0 = time.perf_counter()
    with MemoryMeter(device) as meter:
        with stages("inference"):
            out = model.infer(images.to(device), image_index_seed=image_index_seed, dtype=autocast)
        bar.update(1)
        with stages("cameras"):
            cpu = lambda t: None if t is None else t[0].detach().float().cpu()  # noqa: E731
            outputs = (images, cpu(out.pts3d_global), cpu(out.conf_global), cpu(out.pts3d_local), cpu(out.conf_local))
            rec = build_reconstruction(*outputs, min_conf_percentile=min_conf_percentile, names=names,
                                       **camera_kwargs)
            fallback = "focal" not in camera_kwargs and not bool((rec.cameras.fx > 0).all())
            if fallback:  # degenerate pointmaps (e.g. untrained weights): DUSt3R's default 60-degree focal
                focal = max(images.shape[-2:]) / (2 * math.tan(math.radians(30)))
                rec = build_reconstruction(*outputs, min_conf_percentile=min_conf_percentile, names=names,
                                           focal=focal, **camera_kwargs)
        bar.update(1)
    total = time.perf_counter() - t0
    bar.close()
    info = {**rec.info, **_common_info("fast3r", model, images, chosen, device, autocast, stages, meter, total, rec),
            "image_ids": out.image_ids[0].tolist(), "focal_fallback": fallback}
    return replace(rec, info=info)


def reconstruct_pairwise(views_or_images: ImagesLike, model, *, graph: str = "complete",
                         ga: GlobalAlignmentConfig | None = None, batch_size: int = 8, cache_encoder: bool = True,
                         max_views: int | None = None, device: str | torch.device = "cpu",
                         dtype: str | torch.dtype | None = None, min_conf_percentile: float = 10.0,
                         progress: bool = True, size: int = 512, square: bool | None = None,
                         ga_progress: ProgressCallback | None = None) -> Reconstruction:
    """The pairwise baseline: the network on every pair of ``graph`` (see :func:`manyview.recon.make_pairs`),
    ``batch_size`` pairs at a time, then global alignment (``ga``; default 300 iterations).

    Inputs and the other options as :func:`reconstruct`. ``ga_progress(done, total, loss)`` is called after each
    alignment iteration (besides the progress bar). The point cloud keeps each view's pixels with aligned
    confidence >= its ``min_conf_percentile``.
    """
    from manyview.models.pairwise import PairwiseNet

    if not isinstance(model, PairwiseNet):
        raise ManyviewError(f"reconstruct_pairwise needs a PairwiseNet model, got {type(model).__name__}")
    device, autocast = resolve_device(device), resolve_dtype(dtype)
    images, names, chosen = _prepare(views_or_images, model, max_views, size, square)
    single = images.shape[0] == 1
    if single:  # DUSt3R's demo pairs a lone image with itself
        images, names = images.expand(2, -1, -1, -1), names * 2
    ga = ga or GlobalAlignmentConfig()
    edges = make_pairs(images.shape[0], graph)
    model.to(device)
    stages = StageTimer(device)
    t0 = time.perf_counter()
    with MemoryMeter(device) as meter:
        with stages("pair_inference"):
            pair_bar = progress_bar(total=len(edges), desc="pairs", enabled=progress)
            try:
                preds = model.infer_pairs(images.to(device), edges, batch_size=batch_size,
                                          cache_encoder=cache_encoder, dtype=autocast,
                                          progress=lambda done, total: pair_bar.update(done - pair_bar.n))
            finally:
                pair_bar.close()
        with stages("global_alignment"):
            bar = progress_bar(total=ga.iterations, desc="global alignment", enabled=progress)

            def report(done: int, total: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if ga_progress is not None:
                    ga_progress(done, total, loss)

            try:
                result = global_alignment(*preds, config=ga, progress=report)
            finally:
                bar.close()
            del preds
        with stages("points"):
            rec = _on_cpu(result.to_reconstruction(images.to(result.pointmaps.device), names))
            if single:
                rec = _first_view(rec)
            keep = percentile_mask(rec.confidences, min_conf_percentile)
            rgb = rec.images.permute(0, 2, 3, 1)[keep]
            rec = replace(rec, points=PointCloud(rec.pointmaps[keep], rgb, rec.confidences[keep]))
    total = time.perf_counter() - t0
    info = {"graph": graph, "num_pairs": len(edges), "ga_iterations": ga.iterations,
            "final_loss": result.losses[-1], "min_conf_percentile": min_conf_percentile,
            "cache_encoder": cache_encoder,
            **_common_info("pairwise", model, rec.images, chosen, device, autocast, stages, meter, total, rec)}
    return replace(rec, info=info)


def _on_cpu(rec: Reconstruction) -> Reconstruction:
    cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
    return replace(rec, cameras=rec.cameras.to("cpu", torch.float32), pointmaps=cpu(rec.pointmaps),
                   confidences=cpu(rec.confidences), images=cpu(rec.images), local_pointmaps=cpu(rec.local_pointmaps),
                   local_confidences=cpu(rec.local_confidences), points=rec.points.to("cpu", torch.float32))


def _first_view(rec: Reconstruction) -> Reconstruction:
    one = lambda t: None if t is None else t[:1]  # noqa: E731
    return replace(rec, cameras=rec.cameras[:1], pointmaps=one(rec.pointmaps), confidences=one(rec.confidences),
                   images=one(rec.images), names=rec.names[:1], local_pointmaps=one(rec.local_pointmaps),
                   local_confidences=one(rec.local_confidences))
