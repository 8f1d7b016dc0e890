"""The scalable backend: PostgreSQL with pgvector, selected by a ``postgresql://`` URL.

Tables carry a ``manyview_`` prefix, so a repository can share a database with other data. Vectors are searched by
HNSW indexes (cosine). HNSW is approximate: ``hnsw.ef_search`` (the candidate list a search keeps, pgvector's
default 40) is raised to :data:`DEFAULT_EF_SEARCH` on every connection, and view searches, which are grouped by
scene afterwards, keep at least that many candidates too (bench/README.md gives the recall and latency this buys).

Every write is one transaction that first takes a transaction-scoped advisory lock, so two processes indexing into
one database serialise their writes (re-indexing one name from both cannot duplicate it); a dropped connection or a
killed process rolls its transaction back.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np

from manyview.errors import ManyviewError
from manyview.repository.store import (Neighbour, RepositorySettings, SceneEntry, StoredScene, pack, redact_url,
                                       unpack)

DEFAULT_EF_SEARCH = 200
WRITE_LOCK = 0x6D76_7265  # advisory lock key of manyview repository writes ("mvre")
CONNECT_TIMEOUT_S = 10


def _vec(vector: np.ndarray) -> str:
    """pgvector's text form of a vector."""
    return "[" + ",".join(f"{float(x):.8g}" for x in np.asarray(vector).ravel()) + "]"


def _vector_indexes(settings: RepositorySettings) -> list[str]:
    statements = ["CREATE INDEX manyview_scenes_hnsw ON manyview_scenes USING hnsw (embedding vector_cosine_ops)",
                  "CREATE INDEX manyview_views_hnsw ON manyview_views USING hnsw (embedding vector_cosine_ops)"]
    if settings.text_dim:
        statements.append("CREATE INDEX manyview_text_hnsw ON manyview_scenes USING hnsw "
                          "(text_embedding vector_cosine_ops)")
    return statements


def _schema(settings: RepositorySettings) -> list[str]:
    D, T = settings.dim, settings.text_dim
    statements = [
        "CREATE TABLE manyview_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"CREATE TABLE manyview_scenes (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL, "
        f"scale DOUBLE PRECISION NOT NULL, num_views INTEGER NOT NULL, num_keypoints INTEGER NOT NULL, "
        f"indexed_at TEXT NOT NULL, thumbnail BYTEA, keypoints BYTEA NOT NULL, keypoint_descriptors BYTEA NOT NULL, "
        f"embedding vector({D}) NOT NULL" + (f", text_embedding vector({T})" if T else "") + ")",
        f"CREATE TABLE manyview_views (id BIGSERIAL PRIMARY KEY, scene_id BIGINT NOT NULL REFERENCES "
        f"manyview_scenes(id) ON DELETE CASCADE, view_index INTEGER NOT NULL, embedding vector({D}) NOT NULL)",
        "CREATE INDEX manyview_views_scene ON manyview_views (scene_id)",
    ]
    return statements + _vector_indexes(settings)


class PostgresStore:
    """A repository in a PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, settings: RepositorySettings | None = None, *, create: bool = False,
                 ef_search: int | None = None):
        import psycopg

        self.where = redact_url(url)
        self._psycopg = psycopg
        self.ef_search = DEFAULT_EF_SEARCH if ef_search is None else int(ef_search)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ManyviewError(f"cannot connect to PostgreSQL ({reason})", self.where) from None
        try:
            self.settings = self._open(settings, create)
            self.conn.execute(f"SET hnsw.ef_search = {self.ef_search}")
        except psycopg.Error as e:
            self.conn.close()
            raise ManyviewError(f"repository error ({type(e).__name__}: {str(e).strip().splitlines()[0]})",
                                self.where) from None
        except BaseException:
            self.conn.close()
            raise

    def _meta(self) -> dict[str, str] | None:
        # pg_class read by a query (the statement's snapshot), not to_regclass (the catalog cache, which a process
        # that waited for another's creating transaction may not have refreshed yet)
        exists = self.conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                                   "ON n.oid = c.relnamespace WHERE c.relname = 'manyview_meta' AND "
                                   "n.nspname = current_schema())").fetchone()[0]
        if not exists:
            return None
        return dict(self.conn.execute("SELECT key, value FROM manyview_meta").fetchall())

    def _open(self, settings: RepositorySettings | None, create: bool) -> RepositorySettings:
        meta = self._meta()
        if meta is None:
            if not create:
                raise ManyviewError("this database holds no manyview repository (make one with `manyview index "
                                    "SCENE... --db URL`)", self.where)
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                if self._meta() is None:  # another process may have made it meanwhile
                    try:
                        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    except self._psycopg.Error as e:
                        raise ManyviewError(f"the pgvector extension is not available in this PostgreSQL "
                                            f"({str(e).strip().splitlines()[0]})", self.where) from None
                    for statement in _schema(settings):
                        self.conn.execute(statement)
                    with self.conn.cursor() as cur:
                        cur.executemany("INSERT INTO manyview_meta VALUES (%s, %s)", list(settings.as_dict().items()))
            meta = self._meta()
        stored = RepositorySettings.from_dict(meta, self.where)
        if settings is not None:
            stored.check_compatible(settings, self.where)
        return stored

    # ----------------------------------------------------------------------------------------- writes
    def _check(self, entry: SceneEntry) -> None:
        d = entry.descriptor
        if d.scene.shape != (self.settings.dim,):
            raise ManyviewError(f"descriptor width {d.scene.shape[-1]} differs from the repository's "
                                f"{self.settings.dim}", self.where)

    def _put(self, cur, entry: SceneEntry) -> bool:
        d = entry.descriptor
        text = self.settings.text_dim and entry.text_embedding is not None
        cur.execute("DELETE FROM manyview_scenes WHERE name = %s", (entry.name,))
        replaced = cur.rowcount > 0
        cur.execute(
            "INSERT INTO manyview_scenes (name, path, scale, num_views, num_keypoints, indexed_at, thumbnail, "
            "keypoints, keypoint_descriptors, embedding" + (", text_embedding" if text else "") + ") VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector" + (", %s::vector" if text else "") + ") RETURNING id",
            (entry.name, entry.path, float(d.scale), len(d.views), len(d.keypoints),
             datetime.now(timezone.utc).isoformat(timespec="seconds"), d.thumbnail, pack(d.keypoints, np.float32),
             pack(d.keypoint_descriptors, np.float16), _vec(d.scene))
            + ((_vec(entry.text_embedding),) if text else ()))
        sid = cur.fetchone()[0]
        cur.executemany("INSERT INTO manyview_views (scene_id, view_index, embedding) VALUES (%s, %s, %s::vector)",
                        [(sid, i, _vec(v)) for i, v in enumerate(d.views)])
        return replaced

    def put(self, entry: SceneEntry) -> bool:
        self._check(entry)
        with self._guard(), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            return self._put(cur, entry)

    def put_many(self, entries) -> int:
        """Put every entry in one transaction (bulk loading); returns how many replaced a scene."""
        entries = list(entries)
        for entry in entries:
            self._check(entry)
        with self._guard(), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            return sum(self._put(cur, entry) for entry in entries)

    @contextmanager
    def bulk_load(self, maintenance_work_mem: str = "1GB"):
        """Drop the HNSW indexes, let the caller load many scenes, and build the indexes again at the end (pgvector
        builds an index over loaded rows much faster than it inserts rows one by one into one). Searches in between
        are exact scans; the indexes are rebuilt even when loading fails."""
        with self._guard(), self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            for name in ("manyview_scenes_hnsw", "manyview_views_hnsw", "manyview_text_hnsw"):
                self.conn.execute(f"DROP INDEX IF EXISTS {name}")
        try:
            yield self
        finally:
            with self._guard(), self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                self.conn.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
                for statement in _vector_indexes(self.settings):
                    self.conn.execute(statement)

    def remove(self, name: str) -> bool:
        with self._guard(), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            cur.execute("DELETE FROM manyview_scenes WHERE name = %s", (name,))
            return cur.rowcount > 0

    @contextmanager
    def _guard(self):
        try:
            yield
        except self._psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ManyviewError(f"repository error ({type(e).__name__}: {first})", self.where) from None

    # ----------------------------------------------------------------------------------------- reads
    def _rows(self, sql: str, params=()) -> list[tuple]:
        with self._guard():
            return self.conn.execute(sql, params).fetchall()

    def _search(self, sql: str, params, k: int) -> list[tuple]:
        """A nearest-neighbour query for ``k`` results: an HNSW scan returns at most ``hnsw.ef_search`` rows, so a
        larger ``k`` raises it for this one query."""
        if k <= self.ef_search:
            return self._rows(sql, params)
        with self._guard(), self.conn.transaction():
            self.conn.execute(f"SET LOCAL hnsw.ef_search = {int(k)}")
            return self.conn.execute(sql, params).fetchall()

    def scenes(self) -> list[StoredScene]:
        rows = self._rows("SELECT name, path, scale, num_views, num_keypoints, indexed_at FROM manyview_scenes "
                          "ORDER BY name")
        return [StoredScene(*r) for r in rows]

    def count(self) -> int:
        return int(self._rows("SELECT count(*) FROM manyview_scenes")[0][0])

    def nearest_scenes(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        if k <= 0:
            return []
        rows = self._search("SELECT name, 1 - (embedding <=> %s::vector) FROM manyview_scenes ORDER BY embedding "
                            "<=> %s::vector LIMIT %s", (_vec(vector), _vec(vector), int(k)), k)
        return [Neighbour(n, float(s)) for n, s in rows]

    def nearest_views(self, vector: np.ndarray, k: int) -> list[tuple[Neighbour, int]]:
        if k <= 0:
            return []
        rows = self._search("SELECT s.name, 1 - v.distance, v.view_index FROM (SELECT scene_id, view_index, "
                            "embedding <=> %s::vector AS distance FROM manyview_views ORDER BY embedding <=> %s::vector "
                            "LIMIT %s) v JOIN manyview_scenes s ON s.id = v.scene_id ORDER BY v.distance",
                            (_vec(vector), _vec(vector), int(k)), k)
        return [(Neighbour(n, float(s)), int(i)) for n, s, i in rows]

    def nearest_text(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        if not self.settings.text_dim or k <= 0:
            return []
        rows = self._search("SELECT name, 1 - (text_embedding <=> %s::vector) FROM manyview_scenes WHERE "
                            "text_embedding IS NOT NULL ORDER BY text_embedding <=> %s::vector LIMIT %s",
                            (_vec(vector), _vec(vector), int(k)), k)
        return [Neighbour(n, float(s)) for n, s in rows]

    def scene_vectors(self) -> dict[str, np.ndarray]:
        rows = self._rows("SELECT name, embedding::text FROM manyview_scenes")
        return {n: np.array(text.strip("[]").split(","), dtype=np.float32) for n, text in rows}

    def keypoints(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        rows = self._rows("SELECT keypoints, keypoint_descriptors, scale FROM manyview_scenes WHERE name = %s",
                          (name,))
        if not rows:
            raise ManyviewError(f"no scene called {name!r} in this repository", self.where)
        kp, desc, scale = rows[0]
        return unpack(kp, np.float32, 3), unpack(desc, np.float16, self.settings.dim), float(scale)

    def thumbnail(self, name: str) -> bytes:
        rows = self._rows("SELECT thumbnail FROM manyview_scenes WHERE name = %s", (name,))
        if not rows:
            raise ManyviewError(f"no scene called {name!r} in this repository", self.where)
        return bytes(rows[0][0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["DEFAULT_EF_SEARCH", "PostgresStore"]
