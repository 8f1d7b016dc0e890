"""``manyview index``: scenes described (global descriptors, decorated key points, thumbnail) into a repository.

    manyview index runs/kitchen runs/garden --db scenes.db                 # one SQLite file, made if absent
    manyview index runs/kitchen --db scenes.db                             # again: updated, not duplicated
    manyview index runs/scan_2024/splat.ply --db scenes.db --name kitchen_2024
    manyview index --db scenes.db --remove garden
    manyview index runs/kitchen --db postgresql://user:pass@host/dbname    # PostgreSQL with pgvector
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from manyview.errors import ManyviewError, require
from manyview.features.teachers import DEFAULT_TEACHER, TEACHERS
from manyview.repository.descriptor import REPOSITORY_KEYPOINTS


@dataclass
class Index:
    """Index scenes into the repository DB (a SQLite file, made if absent, or a postgresql:// URL).

    Each SCENE is a reconstruction or posed dataset folder (manyview, COLMAP, transforms.json), or a PLY of points
    or 3D Gaussians with a transforms.json beside it. A scene is stored under its --name (default: its folder's
    name); indexing a name again replaces it. Every scene is one transaction: an interrupted run keeps the scenes
    finished before it and nothing of the one in progress. --remove deletes scenes by name first.
    """

    db: str
    """The repository: a SQLite file path, or postgresql://user:password@host/database."""
    scenes: tyro.conf.Positional[list[Path]] = field(default_factory=list)
    """Scene folders or PLY files to index."""
    name: list[str] = field(default_factory=list)
    """Names for the scenes, one per SCENE in order (default: each scene's folder name)."""
    remove: list[str] = field(default_factory=list)
    """Names of scenes to remove from the repository."""
    teacher: str = DEFAULT_TEACHER
    """The 2D teacher whose features the descriptors are (one per repository)."""
    teacher_weights: Path | None = None
    """The teacher's checkpoint (DINOv2 / CLIP), when not in torch.hub's checkpoint folder."""
    keypoints: int = REPOSITORY_KEYPOINTS
    """At most this many decorated 3D key points per scene."""

    def __post_init__(self):
        require(self.teacher in TEACHERS, "--teacher", f"one of {', '.join(TEACHERS)}", self.teacher)
        require(self.keypoints >= 4, "--keypoints", "at least 4 (PnP needs 4 points)", self.keypoints)

    def interrupted(self) -> str:
        return (f"{self._where()} keeps every scene indexed before the interruption; the scene in progress was not "
                "added (each scene is one transaction)")

    def _where(self) -> str:
        from manyview.repository.store import redact_url

        return redact_url(self.db)

    def _check(self) -> list[str | None]:
        if not self.scenes and not self.remove:
            raise ManyviewError("nothing to do: name scene folders to index, or --remove NAME")
        if self.name and len(self.name) != len(self.scenes):
            raise ManyviewError(f"--name takes one name per scene: {len(self.name)} names for "
                                f"{len(self.scenes)} scenes")
        for scene in self.scenes:
            if not scene.exists():
                raise ManyviewError("no such file or folder", scene)
        names = self.name or [None] * len(self.scenes)
        from manyview.repository.source import default_name

        resolved = [n or default_name(s) for n, s in zip(names, self.scenes)]
        for n in resolved:
            if not n.strip():
                raise ManyviewError("a scene name must not be empty (pass --name)")
        seen = {n for n in resolved if resolved.count(n) > 1}
        if seen:
            raise ManyviewError(f"two scenes would both be called {sorted(seen)[0]!r}: give them --name")
        return resolved

    def run(self) -> None:
        from manyview.repository.index import Indexer
        from manyview.repository.store import is_postgres_url, open_store

        names = self._check()
        if not self.scenes:  # removal only: the repository must exist
            store = open_store(self.db)
        else:
            indexer = Indexer(self.teacher, self.teacher_weights, max_keypoints=self.keypoints)
            # an existing repository is opened (and checked) at once; a new file is made with the first scene, so
            # a run that fails before it leaves nothing behind
            exists = is_postgres_url(self.db) or Path(self.db).exists()
            store = open_store(self.db, indexer.settings, create=True) if exists else None
        try:
            for name in self.remove:
                print(f"removed {name}" if store.remove(name) else f"no scene called {name!r}: nothing removed")
            for scene, name in zip(self.scenes, names):
                entry = indexer.entry(scene, name, store)
                if store is None:
                    store = open_store(self.db, indexer.settings, create=True)
                replaced = store.put(entry)
                d = entry.descriptor
                print(f"{'updated' if replaced else 'added'} {entry.name}: {len(d.views)} views, "
                      f"{len(d.keypoints)} key points ({scene})")
            print(f"{store.where}: {store.count()} scenes")
        finally:
            if store is not None:
                store.close()


__all__ = ["Index"]
