"""The evaluation repository of ``manyview eval repository``: M held-out synthetic scenes, some captured twice, and
optionally real scenes among them; image -> scene, duplicate and text queries scored against the truth.

- **Captures** (:func:`synthetic_capture`): held-out scene ``i`` (seed :func:`~manyview.synth.samples.
  eval_scene_seed`, never trained on; object scenes and rooms alternate) is rendered along its trajectory; every
  few frames one is **held out** as a query photo and the rest, with their exact depth fused into points, are
  indexed. The first ``duplicates`` scenes are captured a second time: another trajectory (other camera positions
  and focal length), other lighting (a darker, tinted exposure) and fewer views; that capture is indexed as its own
  scene ``<name>~2``.
- **Image queries**: each held-out photo against the whole repository (:func:`~manyview.repository.query.
  query_image`); a hit is correct when it is the photo's scene or its second capture (both show the place);
  recall@1 / @5 of the ranking (the located scenes first; for a photo located nowhere, "no match", the ranking by
  descriptor it was not verified in); for correct first hits that were located, the rotation error (degrees) and the camera-centre
  error relative to the scene's size (synthetic captures of one scene share its world frame; a real scene's photos
  are scored against COLMAP's poses of the same reconstruction). Run twice: with the photo's focal length given
  (as EXIF would give it) and swept (unknown).
- **Duplicates** (:func:`~manyview.repository.query.find_duplicates` at its default threshold of aligned key
  points): precision, recall and F1 against the true pairs; also the threshold that would have maximised F1, in
  hindsight (for information only).
- **Text**: each original scene's caption (:func:`~manyview.repository.captions.caption`) as the query; correct as
  for photos; recall@1 / @5.
- **Real scenes** (folders of photos, e.g. ../shared/data/real/family): COLMAP poses every photo; every fourth
  registered photo is held out and the rest indexed with COLMAP's points, among the synthetic distractors.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from manyview.repository.descriptor import describe_photo
from manyview.repository.index import Indexer
from manyview.repository.query import find_duplicates, query_image, query_text
from manyview.repository.store import Store
from manyview.scene import Views

SECOND_CAPTURE = "~2"  # suffix of a scene's second capture
QUERY_EVERY = 5  # one frame in this many (from the third) is held out as a query photo
SECOND_EXPOSURE = (0.7, 0.85, 0.8)  # RGB gains of the second capture: darker, warmer light
SECOND_VIEWS = 0.75  # share of the first capture's view count the second one has


@dataclass
class RepositoryEvalConfig:
    scenes: int = 100  # M synthetic scenes
    duplicates: int = 20  # of them captured a second time
    views: int = 12  # indexed views per first capture
    size: int = 256  # square renders, pixels
    max_points: int = 20_000  # points fused from the depth maps per capture
    top_k: int = 5
    real: tuple[Path, ...] = ()  # folders of photos
    real_image_size: int = 640  # COLMAP's longer side for the real photos


@dataclass
class Capture:
    name: str
    views: Views  # the indexed views (cameras, depths)
    points: Tensor  # (P, 3)
    queries: Views  # held-out photos with their true cameras
    same_place: tuple[str, ...]  # names of every capture of this place (itself included)
    caption: str | None = None


def scene_name(i: int) -> str:
    return f"synth_{i:03d}"


def synthetic_capture(i: int, views: int = 12, size: int = 256, second: bool = False,
                      max_points: int = 20_000, seed: int | None = None) -> tuple[Capture, object]:
    """A capture of held-out scene ``i`` (see the module docstring; ``seed``: another scene seed instead, e.g. a
    training one for calibration); also returns the synth Scene."""
    from manyview.repository.captions import caption
    from manyview.synth import generate
    from manyview.synth.samples import eval_scene_seed

    kind = "object" if i % 2 == 0 else "room"
    kwargs = {"arc_deg": 360.0} if kind == "object" else {}
    n = max(2, round(views * SECOND_VIEWS)) if second else views
    total = n + (0 if second else (n + QUERY_EVERY - 3) // (QUERY_EVERY - 1))
    scene, v = generate(eval_scene_seed(i) if seed is None else seed, kind, num_views=total, height=size, width=size,
                        camera_seed=1 if second else 0, **kwargs)
    held = [] if second else [j for j in range(len(v)) if j % QUERY_EVERY == 2]
    kept = [j for j in range(len(v)) if j not in held][:n]
    if second:
        gain = torch.tensor(SECOND_EXPOSURE, dtype=v.images.dtype)[:, None, None]
        v = replace(v, images=(v.images * gain).clamp(0, 1))
    indexed = v[kept]
    points = indexed.point_cloud(max_points=max_points).xyz.float()
    name = scene_name(i) + (SECOND_CAPTURE if second else "")
    capture = Capture(name, indexed, points, v[held] if held else v[[]], (), None if second else caption(scene))
    return capture, scene


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    r = a[:3, :3].T @ b[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


@dataclass
class QueryRecord:
    scene: str  # the photo's scene
    photo: str
    focal: str  # "given" or "swept"
    hits: list[str]
    located: bool
    rotation_deg: float | None = None
    centre_rel: float | None = None  # camera-centre error / scene size
    seconds: float = 0.0


def score_queries(records: Sequence[QueryRecord], same_place: dict[str, set[str]], top_k: int = 5,
                  max_deg: float = 5.0, max_rel: float = 0.05) -> dict:
    """Recall@1 / @k and pose accuracy of image-query records."""
    n = len(records)
    if n == 0:
        return {"queries": 0}
    first = [r for r in records if r.hits and r.hits[0] in same_place[r.scene]]
    at_k = [r for r in records if same_place[r.scene] & set(r.hits[:top_k])]
    located = [r for r in first if r.located]
    good = [r for r in located if r.rotation_deg <= max_deg and r.centre_rel <= max_rel]
    out = {"queries": n, "recall@1": len(first) / n, f"recall@{top_k}": len(at_k) / n,
           "located_of_correct": len(located) / max(len(first), 1),
           f"pose_ok_of_correct": len(good) / max(len(first), 1),
           "median_rotation_deg": float(np.median([r.rotation_deg for r in located])) if located else None,
           "median_centre_rel": float(np.median([r.centre_rel for r in located])) if located else None,
           "median_query_s": float(np.median([r.seconds for r in records]))}
    return out


def duplicate_scores(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict:
    tp = len(found & truth)
    p = tp / len(found) if found else (1.0 if not truth else 0.0)
    r = tp / len(truth) if truth else 1.0
    return {"pairs_found": len(found), "true_pairs": len(truth), "true_positives": tp, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def best_threshold_in_hindsight(scored: dict[tuple[str, str], int], truth: set[tuple[str, str]]) -> dict:
    """The inlier threshold that maximises F1 over the scored candidate pairs of this very set (what tuning on it
    would give; true pairs never made candidates stay missed)."""
    best = {"f1": -1.0}
    for t in sorted(set(scored.values()) | {1}):
        d = duplicate_scores({p for p, s in scored.items() if s >= t}, truth)
        if d["f1"] > best["f1"]:
            best = {"threshold": int(t), **d}
    return best


@dataclass
class RepositoryEvalReport:
    config: dict
    index: dict = field(default_factory=dict)
    image: dict = field(default_factory=dict)  # "given" / "swept" -> scores
    duplicates: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)  # folder name -> {"given": scores, ...}
    records: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"config": self.config, "index": self.index, "image": self.image, "duplicates": self.duplicates,
                "text": self.text, "real": self.real, "records": [asdict(r) for r in self.records]}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(report: RepositoryEvalReport) -> str:
    lines = ["| queries | focal | photos | recall@1 | recall@5 | located (of correct) | within 5 deg / 5 % (of "
             "correct) | median rot. (deg) | median centre err. (% size) | median s / query |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = [("synthetic", report.image)] + [(f"real: {k}", v) for k, v in report.real.items()]
    for label, by_focal in groups:
        for focal, s in by_focal.items():
            if not s.get("queries"):
                continue
            rot = "n/a" if s["median_rotation_deg"] is None else f"{s['median_rotation_deg']:.2f}"
            lines.append(f"| {label} | {focal} | {s['queries']} | {_pct(s['recall@1'])} | {_pct(s['recall@5'])} | "
                         f"{_pct(s['located_of_correct'])} | {_pct(s['pose_ok_of_correct'])} | {rot} | "
                         f"{_pct(s['median_centre_rel'])} | {s['median_query_s']:.2f} |")
    d = report.duplicates
    if d:
        h = d.get("hindsight", {})
        lines += ["", "| duplicates | threshold (aligned key points) | pairs found | true pairs | precision | recall | F1 |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| default threshold | {d['threshold']:g} | {d['pairs_found']} | {d['true_pairs']} | "
                  f"{_pct(d['precision'])} | {_pct(d['recall'])} | {d['f1']:.3f} |"]
        if h:
            lines.append(f"| best in hindsight (tuned on this set) | {h['threshold']:g} | {h['pairs_found']} | "
                         f"{h['true_pairs']} | {_pct(h['precision'])} | {_pct(h['recall'])} | {h['f1']:.3f} |")
    t = report.text
    if t:
        lines += ["", "| text queries | captions | recall@1 | recall@5 |", "| --- | --- | --- | --- |",
                  f"| synthetic captions (held-out scenes) | {t['queries']} | {_pct(t['recall@1'])} | "
                  f"{_pct(t['recall@5'])} |"]
    return "\n".join(lines)


def _real_captures(folder: Path, image_size: int) -> list[Capture]:
    """One capture of a folder of photos: COLMAP's poses of all, every fourth registered photo held out."""
    from manyview.io.images import list_images
    from manyview.recon.posed_photos import colmap_poses

    photos = list_images(folder)
    posed = colmap_poses(photos, max_image_size=image_size, progress=False)
    views = posed.views
    held = [j for j in range(len(views)) if j % 4 == 2]
    kept = [j for j in range(len(views)) if j not in held]
    return [Capture(folder.name, views[kept], posed.points.xyz.float(), views[held], (folder.name,))]


def _run_queries(store: Store, teacher, capture: Capture, focal: str, top_k: int, scale: float,
                 records: list[QueryRecord]) -> None:
    q = capture.queries
    for j in range(len(q)):
        t0 = time.perf_counter()
        photo = describe_photo(teacher, q.images[j].float())
        intr = q.cameras.fxfycxcy[j].double().numpy() if focal == "given" else None
        result = query_image(store, photo, top_k, fxfycxcy=intr)
        ranking = result.hits or result.info.get("nearest", [])  # no match: the unverified ranking, for recall
        first = result.hits[0] if result.hits else None
        rec = QueryRecord(capture.name, q.names[j] if q.names else str(j), focal, [h.scene for h in ranking],
                          first is not None and first.pose is not None, seconds=time.perf_counter() - t0)
        if rec.located:
            truth = q.cameras.c2w[j].double().numpy()
            rec.rotation_deg = rotation_error_deg(first.pose, truth)
            rec.centre_rel = float(np.linalg.norm(first.pose[:3, 3] - truth[:3, 3]) / scale)
        records.append(rec)


def evaluate_repository(store: Store, indexer: Indexer, cfg: RepositoryEvalConfig,
                        log: Callable[[str], None] = print) -> RepositoryEvalReport:
    """Build the evaluation repository in ``store`` (empty, made with ``indexer.settings``) and score it."""
    from manyview.progress import progress

    report = RepositoryEvalReport(config={k: ([str(p) for p in v] if k == "real" else v)
                                          for k, v in asdict(cfg).items()})
    captures: list[Capture] = []
    t0 = time.perf_counter()
    times = []
    bar = progress(total=cfg.scenes + min(cfg.duplicates, cfg.scenes), desc="index")
    try:
        for i in range(cfg.scenes):
            seconds = [False] + ([True] if i < cfg.duplicates else [])
            group = []
            for second in seconds:
                capture, _ = synthetic_capture(i, cfg.views, cfg.size, second, cfg.max_points)
                t = time.perf_counter()
                entry = indexer.entry_of(indexer.describe_views(capture.views, capture.points), capture.name,
                                         f"synthetic:{i}{'/2' if second else ''}", store)
                store.put(entry)
                times.append(time.perf_counter() - t)
                group.append(capture)
                bar.update(1)
            names = tuple(c.name for c in group)
            captures += [replace(c, same_place=names) for c in group]
    finally:
        bar.close()
    synthetic = list(captures)
    for folder in cfg.real:
        log(f"COLMAP on {folder} ...")
        for capture in _real_captures(Path(folder), cfg.real_image_size):
            t = time.perf_counter()
            store.put(indexer.entry_of(indexer.describe_views(capture.views, capture.points), capture.name,
                                       str(folder), store))
            times.append(time.perf_counter() - t)
            captures.append(capture)
    report.index = {"scenes": store.count(), "seconds": time.perf_counter() - t0,
                    "median_describe_and_put_s": float(np.median(times)), "backend": type(store).__name__}
    same_place = {c.name: set(c.same_place) for c in captures}
    scales = {s.name: s.scale for s in store.scenes()}
    records: list[QueryRecord] = []
    total = sum(len(c.queries) for c in captures) * 2
    bar = progress(total=total, desc="image queries")
    try:
        for focal in ("given", "swept"):
            for c in captures:
                before = len(records)
                _run_queries(store, indexer.teacher, c, focal, cfg.top_k, scales[c.name], records)
                bar.update(len(records) - before)
    finally:
        bar.close()
    report.records = records
    syn = {c.name for c in synthetic}
    for focal in ("given", "swept"):
        report.image[focal] = score_queries([r for r in records if r.focal == focal and r.scene in syn],
                                            same_place, cfg.top_k)
        for c in captures:
            if c.name not in syn:
                report.real.setdefault(c.name, {})[focal] = score_queries(
                    [r for r in records if r.focal == focal and r.scene == c.name], same_place, cfg.top_k)
    # duplicates
    truth = {tuple(sorted(c.same_place)) for c in synthetic if len(c.same_place) == 2}
    dup = find_duplicates(store)
    found = {tuple(sorted(p.scenes)) for p in dup.hits}
    scored = dup.info.get("candidates", {})
    report.duplicates = {"threshold": dup.info["threshold"], **duplicate_scores(found, truth),
                         "hindsight": best_threshold_in_hindsight(scored, truth),
                         "true_pair_scores": {"~".join(p): scored.get(p) for p in sorted(truth)},
                         "false_candidate_scores_top": sorted((v for p, v in scored.items() if p not in truth),
                                                              reverse=True)[:10]}
    # text
    if indexer.alignment is not None and store.settings.text_dim:
        from manyview.repository.text import SentenceEncoder

        firsts = [c for c in synthetic if c.caption is not None]
        encoded = indexer.alignment.embed_text(SentenceEncoder()([c.caption for c in firsts])).numpy()
        at1 = at5 = 0
        for c, vector in zip(firsts, encoded):
            hits = [h.scene for h in query_text(store, vector, cfg.top_k).hits]
            at1 += bool(hits) and hits[0] in same_place[c.name]
            at5 += bool(same_place[c.name] & set(hits[:cfg.top_k]))
        report.text = {"queries": len(firsts), "recall@1": at1 / len(firsts), "recall@5": at5 / len(firsts)}
    return report


def default_eval_db(folder: str | os.PathLike) -> str:
    return str(Path(folder) / "eval_repository.db")


__all__ = ["Capture", "QueryRecord", "RepositoryEvalConfig", "RepositoryEvalReport", "default_eval_db",
           "best_threshold_in_hindsight", "duplicate_scores", "evaluate_repository", "markdown", "rotation_error_deg",
           "scene_name", "score_queries", "synthetic_capture"]
