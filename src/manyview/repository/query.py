"""The repository's three queries: a photo -> the scenes it shows and its pose in the best one; pairs of scenes
that show the same place; scenes ranked by a sentence.

- :func:`query_image`: the photo's global descriptor finds its nearest views (``nearest_views``), grouped by scene
  (a scene scores its best view); then the best ``verify`` candidates are checked geometrically: the photo's 2D key
  cells are matched to each candidate's decorated 3D key points (mutual nearest descriptors), PnP-RANSAC
  (:mod:`manyview.geometry.pnp`; a focal sweep when the photo's intrinsics are unknown) locates the photo, and
  guided re-matching near the key points' projections refines the pose (:func:`locate`). Candidates
  with enough inliers go first (by inliers), so a geometric match beats a look-alike; the winner's pose is reported.
- :func:`find_duplicates`: each scene's nearest scenes by scene descriptor are candidates, verified geometrically:
  their decorated key points are matched and a similarity transform fitted by RANSAC (:func:`same_place`); a pair
  is a duplicate when enough key points agree with one transform. Scene descriptors alone do not separate a place
  seen again in other light from a look-alike (measured: second captures at cosine 0.87-0.94, different scenes up
  to 0.92); the geometry does.
- :func:`query_text`: the sentence's aligned embedding against the scenes' stored ones.

A query that finds nothing returns an empty list with the reason, not an error: a photo is a match only when it is
located in one of the scenes it resembles most (the unverified ranking is kept in ``QueryResult.info["nearest"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from manyview.features.keypoints import match_descriptors
from manyview.geometry.pnp import pnp_ransac, pnp_ransac_focal_sweep
from manyview.repository.descriptor import PhotoDescriptor
from manyview.repository.store import Store

MIN_INLIERS = 12  # PnP inliers for a photo to count as located in a scene
# key points one similarity transform must align for two scenes to be one place: between the highest false pair (20)
# and the lowest true pair found (27) on training scenes (bench/repository_duplicates_calibrate.py)
DUPLICATE_MIN_INLIERS = 24
SIM3_ITERATIONS = 512
SIM3_TOLERANCE = 0.03  # of the scene's size
VIEW_CANDIDATES = 64  # nearest views fetched per image query (grouped by scene afterwards)
REPROJECTION_PX = 8.0  # RANSAC inlier threshold, pixels of the resized photo (a feature cell is 8 px there)
REFINE_ROUNDS = 2  # guided re-matching rounds after the first pose
GUIDED_RADIUS_CELLS = 2.0  # a key point is re-matched among the cells this many cells from its projection
GUIDED_MIN_SIMILARITY = 0.5
REFINE_PX = 6.0  # RANSAC threshold of the refining solves
MIN_GUIDED = 6


@dataclass
class ImageHit:
    scene: str
    score: float  # cosine similarity of the photo to the scene's closest view
    inliers: int = 0  # PnP inliers (0: not verified or not located)
    pose: np.ndarray | None = None  # (4, 4) camera-to-world of the photo in the scene's frame, when located
    focal: float | None = None  # the photo's focal length in its own pixels (given, or found by the sweep)

    def as_dict(self) -> dict:
        d = {"scene": self.scene, "score": round(self.score, 6), "inliers": self.inliers}
        if self.pose is not None:
            d["pose"] = np.asarray(self.pose).round(8).tolist()
            d["focal"] = self.focal
        return d


@dataclass
class QueryResult:
    hits: list  # ImageHit / DuplicatePair / TextHit, best first
    reason: str | None = None  # why it is empty, or a note on the best hit (e.g. "not located")
    info: dict = field(default_factory=dict)


@dataclass
class DuplicatePair:
    scenes: tuple[str, str]
    score: float

    def as_dict(self) -> dict:
        return {"scene": self.scenes[0], "scenes": list(self.scenes), "score": round(self.score, 6)}


@dataclass
class TextHit:
    scene: str
    score: float

    def as_dict(self) -> dict:
        return {"scene": self.scene, "score": round(self.score, 6)}


def _intrinsics(f: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def guided_matches(photo: PhotoDescriptor, positions: np.ndarray, descriptors: np.ndarray, c2w: np.ndarray,
                   K: np.ndarray, radius_px: float, min_similarity: float = GUIDED_MIN_SIMILARITY
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Key points re-matched near where a pose puts them: (key point indices, photo cell indices).

    Each key point in front of the camera and inside the photo takes the most similar cell within ``radius_px``
    of its projection, when that similarity reaches ``min_similarity``."""
    w2c = np.linalg.inv(c2w)
    cam = positions.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam @ K.T)[:, :2] / np.where(z > 1e-9, z, 1.0)[:, None]
    h, w = photo.image_size
    inside = (z > 1e-9) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    idx = np.nonzero(inside)[0]
    if len(idx) == 0:
        return idx, idx
    near = np.linalg.norm(uv[idx, None, :] - photo.xy[None].astype(np.float64), axis=-1) <= radius_px
    sim = np.where(near, descriptors[idx].astype(np.float32) @ photo.descriptors.T, -np.inf)
    best = sim.argmax(1)
    ok = sim[np.arange(len(idx)), best] >= min_similarity
    return idx[ok], best[ok]


def locate(photo: PhotoDescriptor, positions: np.ndarray, descriptors: np.ndarray,
           fxfycxcy: np.ndarray | None = None, seed: int = 0, refine: int = REFINE_ROUNDS
           ) -> tuple[int, np.ndarray | None, float | None]:
    """(inliers, c2w (4, 4) or None, focal in original pixels) of the photo among a scene's key points.

    The photo's cells and the key points are matched (mutual nearest descriptors) and PnP-RANSAC solves the pose:
    with ``fxfycxcy`` (the photo's intrinsics in its original pixels) known, else over a sweep of focals with the
    principal point at the centre. ``refine`` rounds then re-match every key point near its projection
    (:func:`guided_matches`) and solve again at the found focal, which sharpens the pose; the inlier count
    returned is the first solve's (what says whether the photo shows this scene at all)."""
    ia, ib, _ = match_descriptors(torch.from_numpy(photo.descriptors), torch.from_numpy(descriptors))
    if len(ia) < 4:
        return 0, None, None
    xy, X = photo.xy[ia.numpy()], positions[ib.numpy()]
    h, w = photo.image_size
    s = photo.scale_to_original
    if fxfycxcy is not None:
        fx, fy, cx, cy = (float(v) / s for v in fxfycxcy)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        ok, c2w, inliers = pnp_ransac(X, xy, K, iterations=1000, reprojection_error=REPROJECTION_PX, seed=seed)
    else:
        ok, c2w, f, inliers = pnp_ransac_focal_sweep(X, xy, (w / 2, h / 2), (h, w), num_focals=24, iterations=300,
                                                     reprojection_error=REPROJECTION_PX, seed=seed)
        K = _intrinsics(f, w / 2, h / 2)
    if not ok:
        return 0, None, None
    count, pose = int(len(inliers)), c2w.numpy()
    for _ in range(refine):
        ik, ic = guided_matches(photo, positions, descriptors, pose, K, GUIDED_RADIUS_CELLS * photo.cell_px)
        if len(ik) < MIN_GUIDED:
            break
        ok, c2w, inl = pnp_ransac(positions[ik], photo.xy[ic], K, iterations=300,
                                  reprojection_error=REFINE_PX, seed=seed)
        if not ok or len(inl) < MIN_GUIDED:
            break
        pose = c2w.numpy()
    return count, pose, float(K[0, 0]) * s


def query_image(store: Store, photo: PhotoDescriptor, top_k: int = 5, *, fxfycxcy: np.ndarray | None = None,
                verify: int = 3, min_inliers: int = MIN_INLIERS) -> QueryResult:
    """The ``top_k`` scenes a photo shows, the best located by PnP (see the module docstring)."""
    if store.count() == 0:
        return QueryResult([], "the repository holds no scenes")
    views = store.nearest_views(photo.global_descriptor, max(VIEW_CANDIDATES, 4 * top_k))
    best: dict[str, ImageHit] = {}
    for neighbour, _ in views:
        if neighbour.name not in best:
            best[neighbour.name] = ImageHit(neighbour.name, neighbour.score)
    hits = sorted(best.values(), key=lambda h: -h.score)
    for hit in hits[:max(verify, 1)]:
        positions, descriptors, _ = store.keypoints(hit.scene)
        inliers, c2w, focal = locate(photo, positions, descriptors, fxfycxcy)
        hit.inliers = inliers
        if inliers >= min_inliers:
            hit.pose, hit.focal = c2w, focal
    hits.sort(key=lambda h: (-(h.inliers if h.pose is not None else 0), -h.score))
    hits = hits[:top_k]
    if not hits:
        return QueryResult([], "no view of any scene is near this photo")
    if hits[0].pose is None:
        return QueryResult([], f"no match: none of the {min(len(hits), max(verify, 1))} most similar scenes has "
                           f"{min_inliers} key points consistent with one camera pose of this photo (it may show "
                           "none of these scenes)", {"nearest": hits})
    return QueryResult(hits)


def same_place(positions_a: np.ndarray, descriptors_a: np.ndarray, scale_a: float, positions_b: np.ndarray,
               descriptors_b: np.ndarray, iterations: int = SIM3_ITERATIONS, tolerance: float = SIM3_TOLERANCE,
               seed: int = 0) -> tuple[int, int]:
    """(inliers, matches): how many of two scenes' mutually matched key points one similarity transform (scale,
    rotation, translation: the two may be reconstructions in different frames) brings within ``tolerance`` x
    ``scale_a`` of each other. RANSAC over minimal samples of 3 matches, all hypotheses at once (batched
    Umeyama), then the best one refitted on its inliers and counted again."""
    from manyview.geometry.alignment import umeyama

    ia, ib, _ = match_descriptors(torch.from_numpy(descriptors_a), torch.from_numpy(descriptors_b))
    m = len(ia)
    if m < 3:
        return 0, m
    A = torch.from_numpy(positions_a[ia.numpy()]).double()
    B = torch.from_numpy(positions_b[ib.numpy()]).double()
    g = torch.Generator().manual_seed(seed)
    samples = torch.rand(iterations, m, generator=g).argsort(dim=1)[:, :3]  # 3 distinct matches per hypothesis
    tau = tolerance * scale_a

    def count(scale, R, t) -> Tensor:
        moved = scale[:, None, None] * torch.einsum("rij,mj->rmi", R, B) + t[:, None, :]
        return (moved - A[None]).norm(dim=-1) < tau

    inside = count(*umeyama(B[samples], A[samples]))
    best = inside[inside.sum(1).argmax()]
    if best.sum() >= 3:
        refit = count(*umeyama(B[best][None], A[best][None]))[0]
        best = refit if refit.sum() > best.sum() else best
    return int(best.sum()), m


def find_duplicates(store: Store, min_inliers: int = DUPLICATE_MIN_INLIERS, neighbours: int = 10,
                    top_k: int | None = None) -> QueryResult:
    """Pairs of scenes that show the same place, best first (each pair once): each scene's ``neighbours`` nearest
    scenes by scene descriptor are candidates, and a candidate pair is a duplicate when :func:`same_place` finds
    at least ``min_inliers`` key points that one similarity transform aligns (the pair's score)."""
    vectors = store.scene_vectors()
    info = {"threshold": min_inliers, "score": "key points aligned by one similarity transform"}
    if len(vectors) < 2:
        return QueryResult([], "fewer than two scenes in the repository", info)
    candidates: set[tuple[str, str]] = set()
    for name, vector in vectors.items():
        for n in store.nearest_scenes(vector, neighbours + 1):
            if n.name != name:
                candidates.add(tuple(sorted((name, n.name))))
    keypoints: dict[str, tuple] = {}

    def of(name):
        if name not in keypoints:
            keypoints[name] = store.keypoints(name)
        return keypoints[name]

    scored = {}
    for a, b in sorted(candidates):
        pa, da, sa = of(a)
        pb, db, sb = of(b)
        scored[a, b] = min(same_place(pa, da, sa, pb, db)[0], same_place(pb, db, sb, pa, da)[0])
    found = sorted((DuplicatePair(k, float(v)) for k, v in scored.items() if v >= min_inliers),
                   key=lambda p: (-p.score, p.scenes))
    info["candidates"] = scored
    if top_k is not None:
        found = found[:top_k]
    return QueryResult(found, None if found else f"no two scenes share {min_inliers} aligned key points", info)


def query_text(store: Store, text_vector: np.ndarray, top_k: int = 5) -> QueryResult:
    """Scenes ranked by the cosine of their aligned embeddings with the sentence's (``text_vector``)."""
    if store.count() == 0:
        return QueryResult([], "the repository holds no scenes")
    hits = [TextHit(n.name, n.score) for n in store.nearest_text(text_vector, top_k)]
    return QueryResult(hits, None if hits else "no scene of this repository has a text embedding (re-index them)")


__all__ = ["DUPLICATE_MIN_INLIERS", "same_place", "DuplicatePair", "ImageHit", "MIN_INLIERS", "QueryResult", "TextHit",
           "find_duplicates", "locate", "query_image", "query_text"]
