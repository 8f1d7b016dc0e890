"""Sparse features: a scene condensed to at most K decorated 3D key points, and key points detected in one image.

Saliency in 3D is local distinctiveness of the features (``1 - mean cos(f, f_neighbour)``): high where features
change (corners, texture edges, object boundaries), low on flat, uniform regions where a key point could slide. In
2D the same score ranks feature cells when only a feature map is given; with the image, key points are placed at
the image's corners, which a feature map at stride 8 cannot localise (measured: bench/README.md, ConDense).

- 3D: score each point against its ``k`` nearest points, then greedy non-maximum suppression in 3D with a radius
  (:func:`greedy_nms`) keeps at most K points, no two closer than the radius; the descriptors are the points'
  features, unit length.
- 2D: given the image, its corners (Shi-Tomasi, :func:`corner_response`) at sub-pixel positions, greedy NMS in
  pixels, and descriptors sampled bilinearly from the feature map at the key points (:func:`sample_descriptors`),
  unit length: a stride-8 feature map places a point no better than its cell, the image places it to a pixel.
  Without the image: each cell of the feature map scored against its 8 neighbours, NMS over cell centres.
- :func:`match_descriptors`: mutual nearest neighbours by cosine, to match an image's key points to a scene's.

:func:`greedy_nms` (one pass per kept point, vectorised over the candidates) has a plain loop,
:func:`greedy_nms_reference`, beside it and a test holding the two together.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MAX_KEYPOINTS = 256
CORNER_RADIUS_PX = 4.0  # SuperPoint's non-maximum suppression radius


class Keypoints3D(NamedTuple):
    positions: Tensor  # (K, 3) world
    descriptors: Tensor  # (K, C) unit length
    scores: Tensor  # (K,) descending
    indices: Tensor  # (K,) into the scene's points


class Keypoints2D(NamedTuple):
    xy: Tensor  # (K, 2) pixels, COLMAP convention (pixel (i, j) has its centre at (j + 0.5, i + 0.5))
    descriptors: Tensor  # (K, C) unit length
    scores: Tensor  # (K,) descending


# --------------------------------------------------------------------------------------------- NMS
def greedy_nms(coords: Tensor, scores: Tensor, radius: float, max_keep: int) -> Tensor:
    """Indices (at most ``max_keep``, by descending score) of points (N, D) kept by greedy non-maximum
    suppression: the best remaining point is kept and every point closer than ``radius`` to it is dropped.
    Ties are broken by the lower index."""
    n = coords.shape[0]
    if n == 0 or max_keep <= 0:
        return torch.zeros(0, dtype=torch.long, device=coords.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = coords[order].float()
    alive = torch.ones(n, dtype=torch.bool, device=coords.device)
    kept = []
    start = 0
    while len(kept) < max_keep:
        remaining = alive[start:].nonzero()
        if remaining.numel() == 0:
            break
        i = start + int(remaining[0])
        kept.append(i)
        alive[i] = False
        if radius > 0:
            alive &= (ordered - ordered[i]).square().sum(-1) >= radius * radius
        start = i + 1
    return order[torch.tensor(kept, dtype=torch.long, device=coords.device)]


def greedy_nms_reference(coords: Tensor, scores: Tensor, radius: float, max_keep: int) -> Tensor:
    """The same suppression, one candidate at a time against the kept list (small inputs only)."""
    candidates = sorted(range(coords.shape[0]), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in candidates:
        if len(kept) == max_keep:
            break
        if all(float((coords[i].double() - coords[j].double()).norm()) >= radius for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


# --------------------------------------------------------------------------------------------- saliency
def _knn(points: Tensor, k: int) -> Tensor:
    """(P, k) indices of each point's k nearest other points (scipy's cKDTree: large clouds in seconds)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    k = min(k, points.shape[0] - 1)
    _, idx = cKDTree(pts).query(pts, k=k + 1)
    return torch.from_numpy(idx[:, 1:].reshape(points.shape[0], k)).to(points.device)


def saliency3d(points: Tensor, features: Tensor, k: int = 8) -> Tensor:
    """(P,) local distinctiveness of per-point features (P, C): 1 - mean cosine to the ``k`` nearest points."""
    if points.shape[0] < 2:
        return features.new_zeros(points.shape[0])
    unit = F.normalize(features.float(), dim=-1)
    idx = _knn(points, k)
    return 1 - (unit[:, None, :] * unit[idx]).sum(-1).mean(-1)


def saliency2d(feature_map: Tensor) -> Tensor:
    """(h, w) local distinctiveness of a feature map (C, h, w): 1 - mean cosine to the in-bounds 8 neighbours."""
    C, h, w = feature_map.shape
    unit = F.normalize(feature_map.float(), dim=0)
    padded = F.pad(unit[None], (1, 1, 1, 1))[0]
    inside = F.pad(torch.ones(1, 1, h, w, device=unit.device), (1, 1, 1, 1))[0, 0]
    total = unit.new_zeros(h, w)
    count = unit.new_zeros(h, w)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di == dj == 0:
                continue
            shifted = padded[:, 1 + di: 1 + di + h, 1 + dj: 1 + dj + w]
            total += (unit * shifted).sum(0)
            count += inside[1 + di: 1 + di + h, 1 + dj: 1 + dj + w]
    return 1 - total / count.clamp_min(1)


def default_radius3d(points: Tensor, max_keypoints: int) -> float:
    """A suppression radius that lets ``max_keypoints`` spread over the scene: 2 / sqrt(K) of its RMS radius."""
    centred = points.float() - points.float().mean(0)
    return float(centred.square().sum(-1).mean().sqrt()) * 2 / max(max_keypoints, 1) ** 0.5


# --------------------------------------------------------------------------------------------- detectors
def keypoints3d(points: Tensor, features: Tensor, max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
                radius: float | None = None, k: int = 8) -> Keypoints3D:
    """At most ``max_keypoints`` salient points of a scene (points (P, 3), features (P, C)), no two closer than
    ``radius`` (world units; None: :func:`default_radius3d`), with their unit descriptors and scores."""
    if radius is None:
        radius = default_radius3d(points, max_keypoints) if points.shape[0] else 0.0
    scores = saliency3d(points, features, k)
    keep = greedy_nms(points, scores, radius, max_keypoints)
    return Keypoints3D(points[keep], F.normalize(features[keep].float(), dim=-1), scores[keep], keep)


def cell_centres(grid: tuple[int, int], image_size: tuple[int, int], device=None) -> Tensor:
    """(h * w, 2) pixel positions of the centres of an h x w feature grid laid over an H x W image."""
    (h, w), (H, W) = grid, image_size
    rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (H / h)
    cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (W / w)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((xx, yy), dim=-1).reshape(-1, 2)


def sample_descriptors(feature_map: Tensor, xy: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bilinear samples (K, C) of a feature map (C, h, w) laid over an H x W image at pixel positions xy (K, 2)."""
    H, W = image_size
    norm = torch.stack((xy[:, 0] / W * 2 - 1, xy[:, 1] / H * 2 - 1), dim=-1).to(feature_map.dtype)
    out = F.grid_sample(feature_map[None], norm[None, None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].T


def keypoints2d(feature_map: Tensor, image_size: tuple[int, int], max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
                radius_px: float | None = None, image: Tensor | None = None) -> Keypoints2D:
    """At most ``max_keypoints`` key points of one image, with descriptors sampled from its feature map (C, h, w)
    laid over the ``image_size`` (H, W) image.

    With the ``image`` (3, H, W) in [0, 1]: corners of the image itself (:func:`corner_response`, local maxima
    refined to sub-pixel positions), no two closer than ``radius_px`` (None: 4 px, SuperPoint's suppression
    radius). A feature map at stride 8 cannot place a point better than its cell: key points at feature-cell
    centres were re-detected within 3 px of their projection at chance level (11.5 % at 30-60 degrees against
    ~14 % for as many random points), corners of the image at 59 % (bench/README.md, ConDense). Without the image:
    the most distinctive feature cells (:func:`saliency2d`) at their centres, ``radius_px`` defaulting to two
    cells."""
    C, h, w = feature_map.shape
    H, W = image_size
    if image is None:
        if radius_px is None:
            radius_px = 2 * max(H / h, W / w)
        scores = saliency2d(feature_map).reshape(-1)
        centres = cell_centres((h, w), (H, W), feature_map.device)
        keep = greedy_nms(centres, scores, radius_px, max_keypoints)
        xy, kept_scores = centres[keep], scores[keep]
    else:
        if tuple(image.shape[-2:]) != (H, W):
            raise ValueError(f"image {tuple(image.shape[-2:])} does not match image_size {(H, W)}")
        response = corner_response(image)
        peak = F.max_pool2d(response[None, None], 3, stride=1, padding=1)[0, 0]
        candidates = ((response == peak) & (response > 0)).reshape(-1).nonzero()[:, 0]
        pixels = cell_centres((H, W), (H, W), image.device)[candidates]
        scores = response.reshape(-1)[candidates]
        keep = greedy_nms(pixels, scores, CORNER_RADIUS_PX if radius_px is None else radius_px, max_keypoints)
        xy = pixels[keep] + subcell_offsets(response, candidates[keep]).float()
        kept_scores = scores[keep]
    return Keypoints2D(xy, F.normalize(sample_descriptors(feature_map.float(), xy, (H, W)), dim=-1), kept_scores)


def corner_response(image: Tensor, sigma: float = 1.5) -> Tensor:
    """(H, W) Shi-Tomasi corner strength of an image (3, H, W): the smaller eigenvalue of the structure tensor of
    the grey image's Sobel gradients, averaged over a Gaussian window of ``sigma`` px. High only where the image
    changes in two directions (corners, texture blobs); ~0 on flat regions and along straight edges."""
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).float()[None, None]
    sobel = grey.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None] / 8
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    ix, iy = F.conv2d(padded, sobel), F.conv2d(padded, sobel.transpose(-1, -2))
    r = max(1, int(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=grey.dtype, device=grey.device)
    window = torch.exp(-x.square() / (2 * sigma ** 2))
    window = window / window.sum()

    def smooth(t: Tensor) -> Tensor:  # separable Gaussian, borders replicated
        t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), window[None, None, None, :])
        return F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), window[None, None, :, None])

    a, b, c = smooth(ix * ix), smooth(ix * iy), smooth(iy * iy)
    half_trace = (a + c) / 2
    return (half_trace - (half_trace.square() - (a * c - b * b)).clamp_min(0).sqrt())[0, 0]


def subcell_offsets(saliency: Tensor, cells: Tensor) -> Tensor:
    """(K, 2) offsets in cells (x, y), each in [-0.5, 0.5], of the saliency's peak near the flat-indexed ``cells``
    of an (h, w) map: the vertex of the parabola through each cell and its two neighbours along each axis (SIFT's
    refinement, per axis). A key point on a cell centre moves with the grid, not with the scene: without it a point
    is re-detected within 3 px of its projection only where that projection happens to fall near a cell centre."""
    h, w = saliency.shape
    i, j = cells // w, cells % w
    padded = F.pad(saliency[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    centre = padded[i + 1, j + 1]

    def vertex(before: Tensor, after: Tensor, inside: Tensor) -> Tensor:
        curvature = before - 2 * centre + after
        # only a maximum between two real neighbours moves (not a flat spot, not a cell on the border)
        peak = (curvature < 0) & inside
        offset = torch.where(peak, 0.5 * (before - after) / curvature.clamp_max(-1e-12), torch.zeros_like(centre))
        return offset.clamp(-0.5, 0.5)

    dx = vertex(padded[i + 1, j], padded[i + 1, j + 2], (j > 0) & (j < w - 1))
    dy = vertex(padded[i, j + 1], padded[i + 2, j + 1], (i > 0) & (i < h - 1))
    return torch.stack((dx, dy), dim=-1)


def match_descriptors(a: Tensor, b: Tensor, min_similarity: float = -1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours by cosine between descriptors a (Na, C) and b (Nb, C): (ia, ib, similarity)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=a.device)
        return empty, empty, a.new_zeros(0)
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    ab = sim.argmax(dim=1)
    ba = sim.argmax(dim=0)
    ia = torch.arange(a.shape[0], device=a.device)
    mutual = (ba[ab] == ia) & (sim[ia, ab] >= min_similarity)
    return ia[mutual], ab[mutual], sim[ia, ab][mutual]


__all__ = ["CORNER_RADIUS_PX", "DEFAULT_MAX_KEYPOINTS", "corner_response", "Keypoints2D", "Keypoints3D", "cell_centres", "default_radius3d", "greedy_nms",
           "greedy_nms_reference", "keypoints2d", "keypoints3d", "match_descriptors", "saliency2d", "saliency3d",
           "sample_descriptors", "subcell_offsets"]
