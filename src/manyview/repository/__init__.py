"""A searchable repository of 3D scenes (``manyview index`` / ``manyview query``), on the features package.

- :mod:`~manyview.repository.descriptor`: what is stored of a scene (scene and view descriptors, decorated key
  points, size, thumbnail) and of a query photo;
- :mod:`~manyview.repository.store`: the storage interface and :func:`open_store`; backends
  :mod:`~manyview.repository.sqlite_store` (one file, sqlite-vec) and :mod:`~manyview.repository.postgres_store`
  (pgvector, HNSW);
- :mod:`~manyview.repository.source`: a scene folder / splat read for indexing;
- :mod:`~manyview.repository.index`: describing and writing scenes, one transaction each;
- :mod:`~manyview.repository.query`: photo -> scenes + pose (PnP), duplicates, text;
- :mod:`~manyview.repository.text` / :mod:`~manyview.repository.captions`: the sentence encoder, the trained
  text alignment, and the captions of synthetic scenes it is trained on.
"""

from manyview.repository.index import IndexedScene, Indexer
from manyview.repository.query import (DuplicatePair, ImageHit, QueryResult, TextHit, find_duplicates, query_image,
                                       query_text)
from manyview.repository.store import RepositorySettings, SceneEntry, Store, open_store, redact_url

__all__ = ["DuplicatePair", "ImageHit", "IndexedScene", "Indexer", "QueryResult", "RepositorySettings",
           "SceneEntry", "Store", "TextHit", "find_duplicates", "open_store", "query_image", "query_text",
           "redact_url"]
