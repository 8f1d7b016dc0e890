"""The embedded backend: one SQLite file, vectors searched by the ``sqlite-vec`` extension (exact cosine search).

Python's own ``sqlite3`` is often built without extension loading, so the file is opened with ``apsw``. The file
runs in WAL mode (readers do not block the writer); every write is one ``BEGIN IMMEDIATE`` transaction, and a
second process writing at the same time waits for the first (busy timeout) instead of failing. A process killed
mid-write leaves an uncommitted transaction, which SQLite drops when the file is next opened.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from manyview.errors import ManyviewError
from manyview.repository.store import (Neighbour, RepositorySettings, SceneEntry, StoredScene, pack, unpack)

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 120_000


def _schema(settings: RepositorySettings) -> list[str]:
    D, T = settings.dim, settings.text_dim
    statements = [
        "CREATE TABLE manyview_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE scenes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL, "
        "scale REAL NOT NULL, num_views INTEGER NOT NULL, num_keypoints INTEGER NOT NULL, indexed_at TEXT NOT NULL, "
        "thumbnail BLOB, descriptor BLOB NOT NULL, keypoints BLOB NOT NULL, keypoint_descriptors BLOB NOT NULL)",
        "CREATE TABLE views (id INTEGER PRIMARY KEY, scene_id INTEGER NOT NULL REFERENCES scenes(id), "
        "view_index INTEGER NOT NULL)",
        "CREATE INDEX views_scene ON views(scene_id)",
        f"CREATE VIRTUAL TABLE scene_vectors USING vec0(id INTEGER PRIMARY KEY, embedding float[{D}] "
        "distance_metric=cosine)",
        f"CREATE VIRTUAL TABLE view_vectors USING vec0(id INTEGER PRIMARY KEY, embedding float[{D}] "
        "distance_metric=cosine)",
    ]
    if T:
        statements.append(f"CREATE VIRTUAL TABLE text_vectors USING vec0(id INTEGER PRIMARY KEY, "
                          f"embedding float[{T}] distance_metric=cosine)")
    return statements


def _f32(vector: np.ndarray) -> bytes:
    return pack(vector, np.float32)


class SQLiteStore:
    """A repository in one SQLite file (see the module docstring)."""

    def __init__(self, path: str, settings: RepositorySettings | None = None, *, create: bool = False):
        import apsw

        self.where = path
        self._apsw = apsw
        p = Path(path)
        if p.is_dir():
            raise ManyviewError("a folder, not a repository file (give a file path such as scenes.db)", p)
        if not p.exists():
            if not create:
                raise ManyviewError("no such repository (make one with `manyview index SCENE... --db FILE`)", p)
            if not p.parent.is_dir():
                raise ManyviewError("the folder of this repository file does not exist", p)
        elif p.stat().st_size:
            with open(p, "rb") as fh:
                if fh.read(16) != SQLITE_HEADER:
                    raise ManyviewError("not a manyview repository (not a SQLite database file)", p)
        elif not create:
            raise ManyviewError("an empty file, not a manyview repository", p)
        try:
            flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
            self.conn = apsw.Connection(path, flags=flags)
            self.conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            self._load_vec()
            self.settings = self._open(settings, create)
        except apsw.Error as e:
            raise ManyviewError(f"not a readable manyview repository ({type(e).__name__}: {e})", p) from None

    # ----------------------------------------------------------------------------------------- opening
    def _load_vec(self) -> None:
        import sqlite_vec

        self.conn.enable_load_extension(True)
        self.conn.load_extension(sqlite_vec.loadable_path())
        self.conn.enable_load_extension(False)

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM manyview_meta").fetchall())

    def _open(self, settings: RepositorySettings | None, create: bool) -> RepositorySettings:
        tables = self._tables()
        if "manyview_meta" not in tables:
            if tables:
                raise ManyviewError("a SQLite database, but not a manyview repository (left unchanged)", self.where)
            if not create:
                raise ManyviewError("an empty SQLite database, not a manyview repository", self.where)
            with self._write():
                if "manyview_meta" not in self._tables():  # another process may have made it meanwhile
                    for statement in _schema(settings):
                        self.conn.execute(statement)
                    self.conn.executemany("INSERT INTO manyview_meta VALUES (?, ?)", settings.as_dict().items())
            self.conn.execute("PRAGMA journal_mode = WAL")  # outside the transaction: it cannot change inside one
        stored = RepositorySettings.from_dict(self._meta(), self.where)
        if settings is not None:
            stored.check_compatible(settings, self.where)
        return stored

    @contextmanager
    def _write(self):
        """One write transaction, taken at once (BEGIN IMMEDIATE: a concurrent writer waits, none deadlocks)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def _guard(self):
        try:
            yield
        except self._apsw.Error as e:
            raise ManyviewError(f"repository error ({type(e).__name__}: {e})", self.where) from None

    # ----------------------------------------------------------------------------------------- writes
    def _delete(self, scene_id: int) -> None:
        c = self.conn
        c.execute("DELETE FROM view_vectors WHERE id IN (SELECT id FROM views WHERE scene_id = ?)", (scene_id,))
        c.execute("DELETE FROM views WHERE scene_id = ?", (scene_id,))
        c.execute("DELETE FROM scene_vectors WHERE id = ?", (scene_id,))
        if self.settings.text_dim:
            c.execute("DELETE FROM text_vectors WHERE id = ?", (scene_id,))
        c.execute("DELETE FROM scenes WHERE id = ?", (scene_id,))

    def _id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM scenes WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _check(self, entry: SceneEntry) -> None:
        d = entry.descriptor
        if d.scene.shape != (self.settings.dim,):
            raise ManyviewError(f"descriptor width {d.scene.shape[-1]} differs from the repository's "
                                f"{self.settings.dim}", self.where)

    def _put(self, entry: SceneEntry) -> bool:
        d, c = entry.descriptor, self.conn
        old = self._id(entry.name)
        if old is not None:
            self._delete(old)
        c.execute("INSERT INTO scenes (name, path, scale, num_views, num_keypoints, indexed_at, thumbnail, "
                  "descriptor, keypoints, keypoint_descriptors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (entry.name, entry.path, float(d.scale), len(d.views), len(d.keypoints),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"), d.thumbnail, _f32(d.scene),
                   _f32(d.keypoints), pack(d.keypoint_descriptors, np.float16)))
        sid = c.last_insert_rowid()
        c.execute("INSERT INTO scene_vectors (id, embedding) VALUES (?, ?)", (sid, _f32(d.scene)))
        for i, v in enumerate(d.views):
            c.execute("INSERT INTO views (scene_id, view_index) VALUES (?, ?)", (sid, i))
            c.execute("INSERT INTO view_vectors (id, embedding) VALUES (?, ?)", (c.last_insert_rowid(), _f32(v)))
        if self.settings.text_dim and entry.text_embedding is not None:
            c.execute("INSERT INTO text_vectors (id, embedding) VALUES (?, ?)", (sid, _f32(entry.text_embedding)))
        return old is not None

    def put(self, entry: SceneEntry) -> bool:
        self._check(entry)
        with self._guard(), self._write():
            return self._put(entry)

    def put_many(self, entries) -> int:
        """Put every entry in one transaction (bulk loading); returns how many replaced a scene."""
        entries = list(entries)
        for entry in entries:
            self._check(entry)
        with self._guard(), self._write():
            return sum(self._put(entry) for entry in entries)

    def remove(self, name: str) -> bool:
        with self._guard(), self._write():
            old = self._id(name)
            if old is not None:
                self._delete(old)
        return old is not None

    # ----------------------------------------------------------------------------------------- reads
    def scenes(self) -> list[StoredScene]:
        with self._guard():
            rows = self.conn.execute("SELECT name, path, scale, num_views, num_keypoints, indexed_at FROM scenes "
                                     "ORDER BY name").fetchall()
        return [StoredScene(*r) for r in rows]

    def count(self) -> int:
        with self._guard():
            return int(self.conn.execute("SELECT count(*) FROM scenes").fetchone()[0])

    def _knn(self, table: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        with self._guard():
            rows = self.conn.execute(f"SELECT id, distance FROM {table} WHERE embedding MATCH ? AND k = ? "
                                     "ORDER BY distance", (_f32(vector), int(k))).fetchall()
        return [(int(i), 1.0 - float(d)) for i, d in rows]

    def _names(self, ids) -> dict[int, str]:
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self.conn.execute(f"SELECT id, name FROM scenes WHERE id IN ({marks})", ids).fetchall())

    def nearest_scenes(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        hits = self._knn("scene_vectors", vector, k)
        names = self._names(i for i, _ in hits)
        return [Neighbour(names[i], s) for i, s in hits if i in names]

    def nearest_views(self, vector: np.ndarray, k: int) -> list[tuple[Neighbour, int]]:
        hits = self._knn("view_vectors", vector, k)
        if not hits:
            return []
        marks = ",".join("?" * len(hits))
        with self._guard():
            rows = self.conn.execute(f"SELECT v.id, s.name, v.view_index FROM views v JOIN scenes s ON "
                                     f"s.id = v.scene_id WHERE v.id IN ({marks})", [i for i, _ in hits]).fetchall()
        where = {int(i): (name, int(view)) for i, name, view in rows}
        return [(Neighbour(where[i][0], s), where[i][1]) for i, s in hits if i in where]

    def nearest_text(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        if not self.settings.text_dim:
            return []
        hits = self._knn("text_vectors", vector, k)
        names = self._names(i for i, _ in hits)
        return [Neighbour(names[i], s) for i, s in hits if i in names]

    def scene_vectors(self) -> dict[str, np.ndarray]:
        with self._guard():
            rows = self.conn.execute("SELECT name, descriptor FROM scenes").fetchall()
        return {name: np.frombuffer(blob, np.float32).copy() for name, blob in rows}

    def keypoints(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        with self._guard():
            row = self.conn.execute("SELECT keypoints, keypoint_descriptors, scale FROM scenes WHERE name = ?",
                                    (name,)).fetchone()
        if row is None:
            raise ManyviewError(f"no scene called {name!r} in this repository", self.where)
        return unpack(row[0], np.float32, 3), unpack(row[1], np.float16, self.settings.dim), float(row[2])

    def thumbnail(self, name: str) -> bytes:
        with self._guard():
            row = self.conn.execute("SELECT thumbnail FROM scenes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ManyviewError(f"no scene called {name!r} in this repository", self.where)
        return bytes(row[0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["SQLiteStore"]
