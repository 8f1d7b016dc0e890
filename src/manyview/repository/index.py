"""Indexing: scenes described and written into a repository, one transaction each.

:class:`Indexer` holds what describing needs (the teacher, the text alignment when there is one) and the settings
a repository made with it records. :meth:`Indexer.index` describes one scene and stores it under its name: a name
already in the repository is replaced (re-indexing updates, never duplicates). Scenes are committed one by one,
so an interrupted run keeps every scene finished before the interruption and nothing of the one in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from manyview.features.teachers import DEFAULT_TEACHER, load_teacher
from manyview.repository.descriptor import (DEFAULT_IMAGE_SIZE, REPOSITORY_KEYPOINTS, SceneDescriptor,
                                            describe_scene)
from manyview.repository.source import default_name, load_scene_source
from manyview.repository.store import RepositorySettings, SceneEntry, Store
from manyview.repository.text import TextAlignment, load_bundled_alignment
from manyview.scene import Views


@dataclass
class IndexedScene:
    name: str
    path: str
    replaced: bool
    keypoints: int
    views: int


class Indexer:
    """Describes scenes with one teacher (and text alignment) and writes them into a repository."""

    def __init__(self, teacher_name: str = DEFAULT_TEACHER, teacher_weights=None, *,
                 alignment: TextAlignment | None | str = "bundled", max_keypoints: int = REPOSITORY_KEYPOINTS,
                 image_size: int = DEFAULT_IMAGE_SIZE):
        self.teacher_name = teacher_name
        self.teacher = load_teacher(teacher_name, teacher_weights)
        self.alignment = load_bundled_alignment() if alignment == "bundled" else alignment
        if self.alignment is not None and self.alignment.scene_width != self.teacher.dim:
            self.alignment = None  # trained on another teacher's descriptors: no text embeddings
        self.max_keypoints, self.image_size = max_keypoints, image_size

    @property
    def settings(self) -> RepositorySettings:
        a = self.alignment
        return RepositorySettings(self.teacher_name, self.teacher.dim, 0 if a is None else a.dim,
                                  "" if a is None else a.identity)

    def describe(self, path: str | Path) -> SceneDescriptor:
        source = load_scene_source(path)
        return self.describe_views(source.views, source.points)

    def describe_views(self, views: Views, points: Tensor) -> SceneDescriptor:
        """The descriptor of posed views (with cameras; depths used when present) and their points (P, 3)."""
        cams = views.cameras
        return describe_scene(self.teacher, views.images, cams.fxfycxcy, cams.c2w, points, views.depths,
                              max_keypoints=self.max_keypoints, image_size=self.image_size)

    def entry_of(self, descriptor: SceneDescriptor, name: str, path: str, store: Store | None = None) -> SceneEntry:
        """The scene as stored: its descriptor and, when the alignment suits ``store``, its text embedding."""
        text = None
        usable = store is None or (store.settings.text_dim and self.alignment is not None
                                   and store.settings.text_model == self.alignment.identity)
        if self.alignment is not None and usable:
            text = self.alignment.embed_scenes(torch.from_numpy(descriptor.scene)[None])[0].numpy()
        return SceneEntry(name, path, descriptor, text)

    def entry(self, path: str | Path, name: str | None = None, store: Store | None = None) -> SceneEntry:
        return self.entry_of(self.describe(path), name or default_name(Path(path)), str(Path(path).resolve()),
                             store)

    def index(self, store: Store, path: str | Path, name: str | None = None) -> IndexedScene:
        entry = self.entry(path, name, store)
        replaced = store.put(entry)
        d = entry.descriptor
        return IndexedScene(entry.name, entry.path, replaced, len(d.keypoints), len(d.views))


__all__ = ["IndexedScene", "Indexer"]
