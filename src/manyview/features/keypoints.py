"""Sparse features: a scene condensed to at most K decorated 3D key points, and key points detected in one image.

Both sides use one definition of saliency, so that what is salient in 3D is salient in the views that see it: a
point (or feature cell) is salient when its feature differs from its neighbours' (local distinctiveness,
``1 - mean cos(f, f_neighbour)``), which is where features change, i.e. at corners, texture edges and object
boundaries, and not on flat, uniform regions where a key point could slide. Because ConDense's 2D and 3D features
agree (rendering consistency), the 2D score at a point's projection follows the 3D score at the point.

- 3D: score each point against its ``k`` nearest points, then greedy non-maximum suppression in 3D with a radius
  (:func:`greedy_nms`) keeps at most K points, no two closer than the radius; the descriptors are the points'
  features, unit length.
- 2D: score each cell of a feature map against its 8 neighbours, greedy NMS over cell centres in pixels, and
  descriptors sampled bilinearly from the feature map at the key points (:func:`sample_descriptors`), unit length.
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
                radius_px: float | None = None) -> Keypoints2D:
    """At most ``max_keypoints`` salient key points of one image from its feature map (C, h, w) laid over the
    ``image_size`` (H, W) image, no two closer than ``radius_px`` (None: two feature cells)."""
    C, h, w = feature_map.shape
    H, W = image_size
    if radius_px is None:
        radius_px = 2 * max(H / h, W / w)
    scores = saliency2d(feature_map).reshape(-1)
    centres = cell_centres((h, w), (H, W), feature_map.device)
    keep = greedy_nms(centres, scores, radius_px, max_keypoints)
    xy = centres[keep]
    return Keypoints2D(xy, F.normalize(sample_descriptors(feature_map.float(), xy, (H, W)), dim=-1), scores[keep])


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


__all__ = ["DEFAULT_MAX_KEYPOINTS", "Keypoints2D", "Keypoints3D", "cell_centres", "default_radius3d", "greedy_nms",
           "greedy_nms_reference", "keypoints2d", "keypoints3d", "match_descriptors", "saliency2d", "saliency3d",
           "sample_descriptors"]
