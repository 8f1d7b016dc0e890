"""``manyview query``: search a repository made by ``manyview index``, by photo, for duplicates, or in words.

    manyview query --db scenes.db --image photo.jpg                 # the scenes it shows; its pose in the best one
    manyview query --db scenes.db --duplicates --json dups.json     # pairs of scenes that show the same place
    manyview query --db scenes.db --text "a room with a red brick wall" --top-k 3
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from manyview.errors import ManyviewError, require
from manyview.repository.query import DUPLICATE_MIN_INLIERS


@dataclass
class Query:
    """Query the repository DB with exactly one of --image, --duplicates and --text; print a table of the ranked
    results and, with --json, write them as a list of objects (scene, score; pose, camera-to-world 4 x 4, for the
    located photo; scenes, a pair, for duplicates). A query that finds nothing prints why and writes []."""

    db: str
    """The repository: a SQLite file path, or postgresql://user:password@host/database."""
    image: Path | None = None
    """A photo: which scenes it shows, and its camera pose in the best one (PnP on key-point matches)."""
    duplicates: bool = False
    """List pairs of scenes that show the same place (at least --min-inliers key points aligned by one similarity
    transform)."""
    text: str | None = None
    """A description in words: scenes ranked by it."""
    top_k: int = 5
    """How many results to list."""
    json: Path | None = None
    """Also write the ranked results to this JSON file."""
    min_inliers: int = DUPLICATE_MIN_INLIERS
    """--duplicates: how many key points one similarity transform must align for two scenes to be one place."""
    focal: float | None = None
    """--image: the photo's focal length in pixels, when known (default: found by a sweep)."""
    ef_search: int | None = None
    """PostgreSQL: HNSW candidate list per search (default 200; higher finds more of the true nearest)."""

    def __post_init__(self):
        require(self.top_k >= 1, "--top-k", "at least 1", self.top_k)
        require(self.min_inliers >= 3, "--min-inliers", "at least 3", self.min_inliers)
        if self.focal is not None:
            require(self.focal > 0, "--focal", "positive", self.focal)
        if self.ef_search is not None:
            require(self.ef_search >= 1, "--ef-search", "at least 1", self.ef_search)
        chosen = [self.image is not None, self.duplicates, self.text is not None]
        if sum(chosen) != 1:
            raise ManyviewError("give exactly one of --image PHOTO, --duplicates and --text \"...\"")
        if self.text is not None and not self.text.strip():
            raise ManyviewError("--text is empty: describe the scene in words")

    def interrupted(self) -> str:
        return "the repository was only read" + ("" if self.json is None else f"; {self.json} was not written")

    def run(self) -> None:
        from manyview.io.atomic import atomic_open, check_output_file
        from manyview.repository.store import open_store

        if self.json is not None:
            check_output_file(self.json)
        if self.image is not None and not self.image.is_file():
            raise ManyviewError("no such image file", self.image)
        store = open_store(self.db, ef_search=self.ef_search)
        try:
            if self.image is not None:
                result = self._image(store)
            elif self.duplicates:
                from manyview.repository.query import find_duplicates

                result = find_duplicates(store, self.min_inliers, top_k=self.top_k)
            else:
                result = self._text(store)
        finally:
            store.close()
        _print_table(result)
        if self.json is not None:
            with atomic_open(self.json, "w", encoding="utf-8") as fh:
                json.dump([h.as_dict() for h in result.hits], fh, indent=1)
                fh.write("\n")
            print(f"wrote {self.json}")

    def _image(self, store):
        import numpy as np

        from manyview.features.teachers import load_teacher
        from manyview.io.images import read_image
        from manyview.repository.descriptor import describe_photo
        from manyview.repository.query import query_image

        image, _ = read_image(self.image)
        teacher = load_teacher(store.settings.teacher)
        photo = describe_photo(teacher, image)
        intrinsics = None
        if self.focal is not None:
            H, W = image.shape[-2:]
            intrinsics = np.array([self.focal, self.focal, W / 2, H / 2])
        return query_image(store, photo, self.top_k, fxfycxcy=intrinsics)

    def _text(self, store):
        from manyview.repository.query import query_text
        from manyview.repository.text import SentenceEncoder, load_bundled_alignment

        alignment = load_bundled_alignment()
        if alignment is None:
            raise ManyviewError("text queries need the text alignment, which this installation does not ship")
        if not store.settings.text_dim or store.settings.text_model != alignment.identity:
            raise ManyviewError("this repository's scenes were indexed without this manyview's text alignment: "
                                "index them again to query them in words", store.where)
        vector = alignment.embed_text(SentenceEncoder()([self.text]))[0]
        return query_text(store, vector.numpy(), self.top_k)


def _print_table(result) -> None:
    if not result.hits:
        print(f"no results: {result.reason}")
        nearest = result.info.get("nearest")
        if nearest:
            print("most similar, not verified: " + ", ".join(f"{h.scene} ({h.score:.3f})" for h in nearest[:5]))
        return
    from manyview.repository.query import DuplicatePair, ImageHit

    first = result.hits[0]
    if isinstance(first, DuplicatePair):
        print(f"{'score':>8}  scenes (same place: >= {result.info.get('threshold')} key points aligned)")
        for p in result.hits:
            print(f"{p.score:8.0f}  {p.scenes[0]}  ~  {p.scenes[1]}")
        return
    if isinstance(first, ImageHit):
        print(f"{'rank':>4}  {'score':>8}  {'inliers':>7}  scene")
        for i, h in enumerate(result.hits, 1):
            print(f"{i:4d}  {h.score:8.4f}  {h.inliers:7d}  {h.scene}")
        c = first.pose[:3, 3]
        print(f"located in {first.scene}: camera at ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}), focal "
              f"{first.focal:.1f} px, {first.inliers} inliers")
        return
    print(f"{'rank':>4}  {'score':>8}  scene")
    for i, h in enumerate(result.hits, 1):
        print(f"{i:4d}  {h.score:8.4f}  {h.scene}")


__all__ = ["Query"]
