"""Queries and indexing on both backends: a held-out photo found and located (PnP on key-point matches), a photo of
nothing answered with an empty result and a reason, duplicates found by their geometry, text search through the
stored embeddings, scenes indexed from folders (updated, not duplicated); the pieces checked against exact cases;
concurrent writers and a writer killed mid-scene."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from manyview.repository.descriptor import describe_photo
from manyview.repository.evaluate import rotation_error_deg
from manyview.repository.query import find_duplicates, guided_matches, query_image, query_text, same_place
from manyview.repository.store import open_store
from repo_fixtures import HELD_OUT


@pytest.fixture
def full(db, indexer, entries):
    """A repository holding the four scenes."""
    store = open_store(db, indexer.settings, create=True)
    store.put_many(entries.values())
    yield store
    store.close()


def test_held_out_photo_finds_and_locates_its_scene(full, indexer, rendered):
    frames = rendered["studio"]
    cams = frames.cameras
    photo = describe_photo(indexer.teacher, frames.images[HELD_OUT].float())
    result = query_image(full, photo, top_k=3, fxfycxcy=cams.fxfycxcy[HELD_OUT].double().numpy())
    assert result.reason is None and result.hits[0].scene == "studio"
    best = result.hits[0]
    truth = cams.c2w[HELD_OUT].double().numpy()
    scale = full.keypoints("studio")[2]
    assert rotation_error_deg(best.pose, truth) < 10
    assert np.linalg.norm(best.pose[:3, 3] - truth[:3, 3]) / scale < 0.15
    as_json = best.as_dict()
    assert as_json["scene"] == "studio" and np.asarray(as_json["pose"]).shape == (4, 4)
    assert len(result.hits) == 3 and result.hits[1].pose is None  # the others ranked, not located


def test_photo_of_nothing_is_an_empty_result_with_a_reason(full, indexer):
    noise = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    result = query_image(full, describe_photo(indexer.teacher, noise))
    assert result.hits == [] and result.reason.startswith("no match")
    assert len(result.info["nearest"]) >= 1  # the unverified ranking is kept


def test_duplicates_are_found_by_their_geometry(full):
    result = find_duplicates(full, min_inliers=12)
    assert [p.scenes for p in result.hits] == [("garden", "garden_again")]
    d = result.hits[0].as_dict()
    assert d["scenes"] == ["garden", "garden_again"] and d["score"] >= 12
    scored = result.info["candidates"]
    assert max(v for k, v in scored.items() if k != ("garden", "garden_again")) < 12
    assert find_duplicates(full, min_inliers=10_000).hits == []


def test_text_search_returns_the_scene_of_an_embedding(full, entries):
    result = query_text(full, entries["yard"].text_embedding, top_k=2)
    assert [h.scene for h in result.hits][0] == "yard" and len(result.hits) == 2


def test_index_from_folders_updates_instead_of_duplicating(db, indexer, scene_folders):
    store = open_store(db, indexer.settings, create=True)
    try:
        first = indexer.index(store, scene_folders["yard"])
        again = indexer.index(store, scene_folders["yard"])
        assert (first.name, first.replaced, again.replaced) == ("yard", False, True)
        assert [s.name for s in store.scenes()] == ["yard"] and store.scenes()[0].num_views == 6
        assert store.scenes()[0].path == str(scene_folders["yard"].resolve())
    finally:
        store.close()


def test_empty_repository_answers_with_a_reason(db, indexer, entries):
    with open_store(db, indexer.settings, create=True) as store:
        photo = describe_photo(indexer.teacher, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)))
        assert query_image(store, photo).reason == "the repository holds no scenes"
        assert find_duplicates(store).hits == [] and query_text(store, entries["yard"].text_embedding).hits == []


# ------------------------------------------------------------------------------------------ pieces, exact cases
def test_same_place_finds_a_similarity_transform_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    desc = rng.standard_normal((200, 16)).astype(np.float32)
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = (2.5 * pts @ R.T + [3, -1, 0.5]).astype(np.float32)
    order = rng.permutation(200)
    inliers, matches = same_place(pts, desc, 3.0, moved[order], desc[order])
    assert matches == 200 and inliers == 200
    other = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    inliers, _ = same_place(pts, desc, 3.0, other, desc)
    assert inliers < 20


def test_guided_matches_take_the_cell_at_the_projection():
    from manyview.repository.descriptor import PhotoDescriptor

    rng = np.random.default_rng(1)
    xy = np.stack(np.meshgrid(np.arange(4) * 8 + 4.0, np.arange(4) * 8 + 4.0), -1).reshape(-1, 2)
    cells = rng.standard_normal((16, 8)).astype(np.float32)
    cells /= np.linalg.norm(cells, axis=1, keepdims=True)
    photo = PhotoDescriptor(cells[0], xy.astype(np.float32), cells, (32, 32), 1.0, 8.0)
    K = np.array([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]])
    pick = [5, 10, 3]
    depth = np.array([2.0, 3.0, 4.0])
    rays = np.linalg.solve(K, np.c_[xy[pick] + 1.5, np.ones(3)].T).T  # 1.5 px off the cell centres
    points = rays * depth[:, None]
    behind = np.array([[0.0, 0.0, -1.0]])
    kp, cell = guided_matches(photo, np.r_[points, behind], np.r_[cells[pick], cells[:1]], np.eye(4), K, 4.0)
    assert kp.tolist() == [0, 1, 2] and cell.tolist() == pick


# ------------------------------------------------------------------------------------------ processes
CHILD = textwrap.dedent("""
    import pickle, sys, time
    from manyview.repository.store import open_store
    db, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(path, "rb") as fh:
        settings, entries = pickle.load(fh)

    class Stalling(list):  # the view vectors of the second scene: written after its scene row, then a stall
        def __iter__(self):
            yield self[0]
            print("mid-scene", flush=True)
            time.sleep(120)

    store = open_store(db, settings, create=True)
    if mode == "kill":
        store.put(entries[0])
        stalled = entries[1]
        stalled.descriptor.views = Stalling(stalled.descriptor.views)
        store.put(stalled)
    else:
        for entry in entries:
            store.put(entry)
    store.close()
""")


def _child(tmp_path, db, settings, entries, mode, tag):
    import pickle

    data = tmp_path / f"entries_{tag}.pkl"
    with open(data, "wb") as fh:
        pickle.dump((settings, entries), fh)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CHILD, db, str(data), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_processes_indexing_at_once_lose_nothing(db, indexer, entries, tmp_path):
    from dataclasses import replace

    many = [replace(e, name=f"{e.name}_{i}") for i in range(3) for e in entries.values()]
    a = _child(tmp_path, db, indexer.settings, many[::2], "put", "a")
    b = _child(tmp_path, db, indexer.settings, many[1::2], "put", "b")
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_store(db) as store:
        assert sorted(s.name for s in store.scenes()) == sorted(e.name for e in many)
        assert len(store.nearest_views(entries["yard"].descriptor.views[0], 1000)) == 6 * len(many)


@pytest.mark.slow
def test_an_index_killed_mid_scene_keeps_every_earlier_scene(db, indexer, entries, tmp_path):
    child = _child(tmp_path, db, indexer.settings, [entries["garden"], entries["studio"]], "kill", "k")
    try:
        line = child.stdout.readline()
        assert line.strip() == "mid-scene", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    with open_store(db) as store:
        assert [s.name for s in store.scenes()] == ["garden"]
        assert [n.name for n, _ in store.nearest_views(entries["studio"].descriptor.views[0], 100)] == ["garden"] * 6
        store.put(entries["studio"])  # and the repository takes writes again
        assert store.count() == 2
    if not db.startswith("postgresql"):
        assert Path(db).exists()
