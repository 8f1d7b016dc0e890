"""The repository's storage interface: one :class:`Store` protocol, two backends, one way to open either.

A repository holds, per scene (keyed by its unique name): its path, size, thumbnail, scene descriptor, view
descriptors, decorated key points and (when a text model was available at indexing) its text-space embedding. The
settings every scene must share (the teacher and the descriptor widths) are recorded once in the repository; a
scene described otherwise is refused rather than mixed in.

- ``sqlite`` (:mod:`~manyview.repository.sqlite_store`): one file, vectors searched by ``sqlite-vec`` (exact);
- ``postgresql`` (:mod:`~manyview.repository.postgres_store`): pgvector with HNSW indexes, selected by a
  ``postgresql://`` URL.

Writes are transactional per scene: :meth:`Store.put` replaces a scene of the same name or adds it, all or nothing;
an interrupted write leaves the repository as it was before that scene.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from manyview.errors import ManyviewError
from manyview.repository.descriptor import SceneDescriptor

FORMAT_NAME = "manyview-repository"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RepositorySettings:
    """What every scene of one repository shares."""

    teacher: str  # the 2D teacher whose features all descriptors are
    dim: int  # descriptor width (the teacher's)
    text_dim: int  # width of the text-aligned embeddings (0: no text model)
    text_model: str  # identity of the text alignment (file hash), "" when none

    def as_dict(self) -> dict[str, str]:
        return {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "teacher": self.teacher,
                "dim": str(self.dim), "text_dim": str(self.text_dim), "text_model": self.text_model}

    @classmethod
    def from_dict(cls, meta: dict[str, str], where: str) -> "RepositorySettings":
        if meta.get("format") != FORMAT_NAME:
            raise ManyviewError("not a manyview repository (no manyview-repository marker in its metadata)", where)
        if int(meta.get("version", "0")) > FORMAT_VERSION:
            raise ManyviewError(f"repository version {meta.get('version')} is newer than this manyview reads "
                                f"({FORMAT_VERSION})", where)
        try:
            return cls(meta["teacher"], int(meta["dim"]), int(meta["text_dim"]), meta.get("text_model", ""))
        except (KeyError, ValueError) as e:
            raise ManyviewError(f"damaged repository metadata ({e})", where) from None

    def check_compatible(self, other: "RepositorySettings", where: str) -> None:
        """Refuse to mix scenes described by another teacher / width into this repository."""
        if (self.teacher, self.dim) != (other.teacher, other.dim):
            raise ManyviewError(f"this repository holds descriptors of teacher {self.teacher!r} ({self.dim} "
                                f"channels), not {other.teacher!r} ({other.dim}): index into a new repository "
                                "or use its teacher", where)


@dataclass
class SceneEntry:
    """One scene to store."""

    name: str
    path: str
    descriptor: SceneDescriptor
    text_embedding: np.ndarray | None = None  # (text_dim,) unit, or None


@dataclass(frozen=True)
class StoredScene:
    """What a listing of the repository says of one scene."""

    name: str
    path: str
    scale: float
    num_views: int
    num_keypoints: int
    indexed_at: str


@dataclass(frozen=True)
class Neighbour:
    """A search hit: the scene's name and the cosine similarity of the vectors compared."""

    name: str
    score: float


class Store(Protocol):
    """A repository backend. ``where`` names it in messages (a path, or a URL without its password)."""

    where: str
    settings: RepositorySettings

    def put(self, entry: SceneEntry) -> bool:
        """Add the scene or replace the one of the same name, in one transaction; True when one was replaced."""

    def put_many(self, entries) -> int:
        """Put several scenes in one transaction (bulk loading); returns how many replaced a scene."""

    def remove(self, name: str) -> bool:
        """Remove the scene called ``name``; False when there is none."""

    def scenes(self) -> list[StoredScene]:
        """Every scene, by name."""

    def count(self) -> int: ...

    def nearest_scenes(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """The ``k`` scenes whose scene descriptors are closest (cosine) to ``vector``, best first."""

    def nearest_views(self, vector: np.ndarray, k: int) -> list[tuple[Neighbour, int]]:
        """The ``k`` views closest to ``vector``: (scene and similarity, view index), best first."""

    def nearest_text(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """The ``k`` scenes whose text-space embeddings are closest to ``vector``, best first."""

    def scene_vectors(self) -> dict[str, np.ndarray]:
        """name -> scene descriptor, for every scene."""

    def keypoints(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """The decorated key points of a scene: positions (K, 3), descriptors (K, C), and its scale."""

    def thumbnail(self, name: str) -> bytes: ...

    def close(self) -> None: ...


def is_postgres_url(db: str | os.PathLike) -> bool:
    return isinstance(db, str) and db.split("://", 1)[0] in ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (what messages may show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_store(db: str | os.PathLike, settings: RepositorySettings | None = None, *, create: bool = False,
               ef_search: int | None = None) -> Store:
    """Open the repository ``db`` (a SQLite file path, or a ``postgresql://`` URL).

    ``create``: make it when absent, with ``settings`` (required then); an existing repository must agree with
    ``settings`` when given. Without ``create`` a missing repository is an error."""
    if create and settings is None:
        raise ValueError("creating a repository needs its settings")
    if is_postgres_url(db):
        from manyview.repository.postgres_store import PostgresStore

        return PostgresStore(str(db), settings, create=create, ef_search=ef_search)
    from manyview.repository.sqlite_store import SQLiteStore

    return SQLiteStore(os.fspath(db), settings, create=create)


def pack(array: np.ndarray, dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def unpack(blob: bytes, dtype, columns: int) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=dtype).reshape(-1, columns).astype(np.float32)


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Neighbour", "RepositorySettings", "SceneEntry", "Store", "StoredScene",
           "is_postgres_url", "open_store", "pack", "redact_url", "unpack"]
