"""The repository on both backends (SQLite + sqlite-vec, PostgreSQL + pgvector), the same tests on each: scenes
added, re-indexed (updated, not duplicated), removed; searches that find the right scene; a failed write that
leaves the repository as it was; bad repositories refused with one clear line."""

from __future__ import annotations

import numpy as np
import pytest

from manyview.errors import ManyviewError
from manyview.repository.store import open_store, redact_url


def _store(db, indexer):
    return open_store(db, indexer.settings, create=True)


def test_add_reindex_remove(db, indexer, entries):
    with _store(db, indexer) as store:
        assert store.count() == 0
        for name in ("garden", "studio", "yard"):
            assert store.put(entries[name]) is False
        assert [s.name for s in store.scenes()] == ["garden", "studio", "yard"]
        # the same name again: replaced, not duplicated (even with another scene's content)
        assert store.put(entries["yard"]) is True
        assert store.count() == 3 and len(store.nearest_views(entries["yard"].descriptor.views[0], 100)) == 3 * 6
        listed = {s.name: s for s in store.scenes()}
        assert listed["studio"].num_views == 6 and listed["studio"].scale == pytest.approx(
            entries["studio"].descriptor.scale)
        # stored key points come back (descriptors kept as float16)
        pos, desc, scale = store.keypoints("garden")
        d = entries["garden"].descriptor
        np.testing.assert_array_equal(pos, d.keypoints)
        np.testing.assert_allclose(desc, d.keypoint_descriptors, atol=1e-3)
        assert store.thumbnail("garden") == d.thumbnail and store.thumbnail("garden")[:4] == b"\x89PNG"
        assert store.remove("studio") is True and store.remove("studio") is False
        assert [s.name for s in store.scenes()] == ["garden", "yard"]
        assert all(n.name != "studio" for n, _ in store.nearest_views(entries["studio"].descriptor.views[0], 100))
        with pytest.raises(ManyviewError, match="no scene called 'studio'"):
            store.keypoints("studio")
    # reopened: everything committed is there
    with open_store(db) as store:
        assert [s.name for s in store.scenes()] == ["garden", "yard"]


def test_searches_rank_the_right_scene_first(db, indexer, entries):
    with _store(db, indexer) as store:
        for entry in entries.values():
            store.put(entry)
        for name, entry in entries.items():
            d = entry.descriptor
            top = store.nearest_scenes(d.scene, 2)
            assert top[0].name == name and top[0].score == pytest.approx(1.0, abs=1e-5)
            assert top[0].score >= top[1].score
            view, index = store.nearest_views(d.views[3], 1)[0]
            assert (view.name, index) == (name, 3)
            text = store.nearest_text(entry.text_embedding, 1)[0]
            assert text.name == name and text.score == pytest.approx(1.0, abs=1e-5)
        vectors = store.scene_vectors()
        assert set(vectors) == set(entries)
        np.testing.assert_allclose(vectors["yard"], entries["yard"].descriptor.scene, atol=1e-6)


def test_a_failed_write_leaves_the_repository_as_it_was(db, indexer, entries):
    from dataclasses import replace

    with _store(db, indexer) as store:
        store.put(entries["garden"])
        before = (store.scenes(), store.keypoints("garden")[0])
        # the same name with a view descriptor of the wrong width fails half-way (after the old scene was deleted)
        bad = replace(entries["garden"], descriptor=replace(entries["yard"].descriptor,
                                                           views=np.zeros((2, 7), np.float32)))
        with pytest.raises(ManyviewError):
            store.put(bad)
        assert store.scenes() == before[0]
        np.testing.assert_array_equal(store.keypoints("garden")[0], before[1])
        assert store.nearest_scenes(entries["garden"].descriptor.scene, 1)[0].name == "garden"
        store.put(entries["yard"])  # and it still takes writes
        assert store.count() == 2


def test_another_teacher_is_refused(db, indexer, entries):
    from dataclasses import replace

    with _store(db, indexer):
        pass
    other = replace(indexer.settings, teacher="dinov2-vits14", dim=384)
    with pytest.raises(ManyviewError, match="teacher 'efficientnet-lite0'"):
        open_store(db, other, create=True)


def test_missing_repository_is_not_made_by_a_query(db):
    with pytest.raises(ManyviewError, match="(no such repository|holds no manyview repository)"):
        open_store(db)


# ------------------------------------------------------------------------------------------ one backend each
def test_sqlite_file_that_is_not_a_repository_is_refused_and_left_as_it_was(tmp_path, indexer):
    import apsw

    text = tmp_path / "notes.db"
    text.write_text("not a database at all\n")
    with pytest.raises(ManyviewError, match="not a manyview repository") as e:
        open_store(text, indexer.settings, create=True)
    assert str(text) in str(e.value) and text.read_text() == "not a database at all\n"
    other = tmp_path / "other.db"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    data = other.read_bytes()
    with pytest.raises(ManyviewError, match="a SQLite database, but not a manyview repository"):
        open_store(other, indexer.settings, create=True)
    assert other.read_bytes() == data
    corrupt = tmp_path / "corrupt.db"
    with _store(tmp_path / "good.db", indexer):
        pass
    good = (tmp_path / "good.db").read_bytes()
    corrupt.write_bytes(good[:100] + b"\xff" * (len(good) - 100))
    with pytest.raises(ManyviewError, match="corrupt.db"):
        open_store(corrupt, indexer.settings, create=True)


def test_unreachable_postgres_names_the_url_without_its_password():
    url = "postgresql://alice:s3cret@127.0.0.1:1/scenes"
    with pytest.raises(ManyviewError) as e:
        open_store(url)
    message = str(e.value)
    assert "s3cret" not in message and "postgresql://alice:***@127.0.0.1:1/scenes" in message
    assert "cannot connect to PostgreSQL" in message
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_postgres_repository_shares_a_database_with_other_tables(pg_server, indexer, entries):
    import psycopg

    from repo_fixtures import _drop_database, _new_database

    name = _new_database(pg_server)
    url = pg_server.get_uri(database=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE people (name TEXT)")
            conn.execute("INSERT INTO people VALUES ('ada')")
        with _store(url, indexer) as store:
            store.put(entries["garden"])
            assert store.ef_search >= 100  # raised above pgvector's default 40 (recall)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT name FROM people").fetchall() == [("ada",)]
            conn.execute("SELECT '[1]'::vector")  # loads pgvector, whose setting then reads its default
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"  # only our sessions change it
    finally:
        _drop_database(pg_server, name)


def test_postgres_bulk_load_rebuilds_its_vector_indexes(pg_server, indexer, entries):
    import psycopg

    from repo_fixtures import _drop_database, _new_database

    name = _new_database(pg_server)
    url = pg_server.get_uri(database=name)
    indexes = "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'manyview_%%_hnsw' ORDER BY indexname"
    try:
        with _store(url, indexer) as store:
            with store.bulk_load():
                with psycopg.connect(url, autocommit=True) as conn:
                    assert conn.execute(indexes).fetchall() == []
                assert store.put_many(entries.values()) == 0
            with psycopg.connect(url, autocommit=True) as conn:
                assert [r[0] for r in conn.execute(indexes)] == ["manyview_scenes_hnsw", "manyview_text_hnsw",
                                                                 "manyview_views_hnsw"]
            for n, entry in entries.items():
                assert store.nearest_scenes(entry.descriptor.scene, 1)[0].name == n
            # k above ef_search: raised for that query, so all views come back
            small = type(store)(url, ef_search=8)
            try:
                assert len(small.nearest_views(entries["yard"].descriptor.views[0], 24)) == 24
            finally:
                small.close()
    finally:
        _drop_database(pg_server, name)
