"""Query latency of the repository against 10^4 and 10^5 scenes, on SQLite (sqlite-vec, exact) and PostgreSQL
(pgvector HNSW), with a NumPy brute-force search in the same run as the baseline.

    python bench/repository_scale.py                     # 10^4 and 10^5 scenes; writes bench/results/repository_scale.json

Scenes carry synthetic descriptors (the size test needs no rendering): scene vectors drawn around 200 cluster
centres (scenes look alike in groups, as real repositories do), ``--views`` view vectors each (the scene's vector
plus noise), a text embedding, 8 key points and a 1 KB thumbnail, all at the default teacher's width (152). The
PostgreSQL server is a private one started here by pgserver (PostgreSQL 18 + pgvector 0.8) in a temporary folder.

Per backend and size: build time (one transaction per 1000 scenes; on PostgreSQL the HNSW indexes are built after
the rows are loaded, ``PostgresStore.bulk_load``), then 100 queries of each kind (the view search
an image query starts with, k = 64; the scene search of duplicates, k = 11; the text search, k = 5), median and
95th percentile latency, and recall@k of the returned ids against the exact answer (HNSW is approximate; PostgreSQL
at pgvector's default ``hnsw.ef_search`` = 40 and at manyview's 200). PnP verification of an image query does not
depend on the repository's size (bench/README.md gives it from the evaluation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from manyview.repository.descriptor import SceneDescriptor
from manyview.repository.store import RepositorySettings, SceneEntry, open_store

DIM, TEXT_DIM, CLUSTERS = 152, 64, 200
QUERIES = 100
KINDS = {"views": 64, "scenes": 11, "text": 5}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(n: int, views: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((CLUSTERS, DIM)))
    scenes = unit(centres[rng.integers(CLUSTERS, size=n)] + 0.35 * rng.standard_normal((n, DIM)) / DIM ** 0.5 * 4)
    view = unit(np.repeat(scenes, views, 0) + 0.15 * rng.standard_normal((n * views, DIM)) / DIM ** 0.5 * 4)
    text = unit(rng.standard_normal((n, TEXT_DIM)))
    return {"scenes": scenes, "views": view, "text": text}


def entries(data: dict, views: int, start: int, stop: int, rng: np.random.Generator):
    for i in range(start, stop):
        d = SceneDescriptor(scene=data["scenes"][i], views=data["views"][i * views:(i + 1) * views],
                            keypoints=rng.standard_normal((8, 3)).astype(np.float32),
                            keypoint_descriptors=unit(rng.standard_normal((8, DIM))), scale=1.0,
                            thumbnail=bytes(1024))
        yield SceneEntry(f"scene_{i:06d}", f"/scenes/{i}", d, data["text"][i])


def exact(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(vectors @ q))[:k]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def measure(store, data: dict, views: int, rng: np.random.Generator) -> dict:
    out = {}
    for kind, k in KINDS.items():
        vectors = data[kind]
        picks = rng.integers(len(vectors), size=QUERIES)
        width = vectors.shape[1]
        queries = unit(vectors[picks] + 0.2 * rng.standard_normal((QUERIES, width)) / width ** 0.5 * 4)
        times, recall, brute = [], [], []
        for q in queries:
            t = time.perf_counter()
            if kind == "views":
                got = [(h.name, i) for h, i in store.nearest_views(q, k)]
            elif kind == "scenes":
                got = [h.name for h in store.nearest_scenes(q, k)]
            else:
                got = [h.name for h in store.nearest_text(q, k)]
            times.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            truth = exact(vectors, q, k)
            brute.append(1000 * (time.perf_counter() - t))
            if kind == "views":
                want = {(f"scene_{j // views:06d}", j % views) for j in truth}
            else:
                want = {f"scene_{j:06d}" for j in truth}
            recall.append(len(want & set(got)) / k)
        out[kind] = {"k": k, "median_ms": statistics.median(times), "p95_ms": pct(times, 95),
                     f"recall@{k}": float(np.mean(recall)), "numpy_brute_force_median_ms": statistics.median(brute)}
    return out


def run_backend(db: str, n: int, views: int, data: dict, ef_values=(None,)) -> list[dict]:
    settings = RepositorySettings("efficientnet-lite0", DIM, TEXT_DIM, "scale-benchmark")
    rng = np.random.default_rng(1)
    store = open_store(db, settings, create=True)
    t0 = time.perf_counter()
    bulk = store.bulk_load() if hasattr(store, "bulk_load") else contextlib.nullcontext()
    with bulk:
        for start in range(0, n, 1000):
            store.put_many(entries(data, views, start, min(n, start + 1000), rng))
    build = time.perf_counter() - t0
    store.close()
    rows = []
    for ef in ef_values:
        store = open_store(db, ef_search=ef)
        try:
            rows.append({"num_scenes": n, "views_per_scene": views, "build_s": build, "ef_search": ef,
                         **measure(store, data, views, np.random.default_rng(2))})
        finally:
            store.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| backend | scenes | build (s) | ef_search | view search k=64: median / p95 ms (recall) | scene search "
             "k=11 (recall) | text search k=5 (recall) | NumPy brute force, views: median ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = []
        for kind in ("views", "scenes", "text"):
            m = r[kind]
            recall = m["recall@" + str(m["k"])]
            cells.append(f"{m['median_ms']:.1f} / {m['p95_ms']:.1f} ({recall:.3f})")
        lines.append(f"| {r['backend']} | {r['num_scenes']:,} | {r['build_s']:.0f} | {r['ef_search'] or '-'} | "
                     f"{' | '.join(cells)} | {r['views']['numpy_brute_force_median_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/repository_scale.json"))
    args = ap.parse_args()
    rows: list[dict] = []
    folder = Path(tempfile.mkdtemp(prefix="manyview_scale_"))
    server = None
    try:
        if "postgresql" in args.backends:
            import pgserver
            import psycopg

            server = pgserver.get_server(folder / "pg", cleanup_mode="stop")
        for n in args.sizes:
            data = make_data(n, args.views)
            for backend in args.backends:
                if backend == "sqlite":
                    db, efs = str(folder / f"scale_{n}.db"), (None,)
                else:
                    name = f"scale_{n}"
                    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                        conn.execute(f"DROP DATABASE IF EXISTS {name}")
                        conn.execute(f"CREATE DATABASE {name}")
                    db, efs = server.get_uri(database=name), (40, 200)
                for row in run_backend(db, n, args.views, data, efs):
                    row["backend"] = backend
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                if backend == "sqlite":
                    Path(db).unlink(missing_ok=True)
        print(table(rows))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "dim": DIM, "text_dim": TEXT_DIM, "queries": QUERIES},
                                       indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
