"""``manyview index`` / ``manyview query`` as a user runs them (SQLite; both backends are covered by
tests/repository): scenes indexed, re-indexed and removed; a photo, duplicates and words queried with --json;
every bad input refused with one clear line and nothing changed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_helpers import refused

from manyview.cli.main import main

SIZE, HELD_OUT = 96, 3


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two scene folders (a room and an object scene, 6 views each) and a held-out photo of the room with its
    focal length and true pose."""
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # see tests/repository/conftest.py
    from PIL import Image

    from manyview.io.dataset import write_dataset
    from manyview.synth import generate

    root = tmp_path_factory.mktemp("index_query")
    photo = {}
    for name, seed, kind in (("studio", 4, "room"), ("garden", 3, "object")):
        _, frames = generate(seed, kind, num_views=7, height=SIZE, width=SIZE)
        views = frames[[i for i in range(7) if i != HELD_OUT]]
        write_dataset(root / name, views, points=views.point_cloud(max_points=3000))
        if name == "studio":
            image = (frames.images[HELD_OUT].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(image).save(root / "photo.png")
            photo = {"path": root / "photo.png", "focal": float(frames.cameras.fxfycxcy[HELD_OUT, 0]),
                     "c2w": frames.cameras.c2w[HELD_OUT].double().numpy()}
    return root, photo


@pytest.mark.slow
def test_index_then_query_by_photo_duplicates_and_words(scenes, tmp_path, capsys):
    root, photo = scenes
    db = tmp_path / "scenes.db"
    assert main(["index", str(root / "studio"), str(root / "garden"), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "added studio" in out and "added garden" in out and "2 scenes" in out
    assert main(["index", str(root / "garden"), "--db", str(db)]) == 0
    assert "updated garden" in capsys.readouterr().out

    hits = tmp_path / "hits.json"
    assert main(["query", "--db", str(db), "--image", str(photo["path"]), "--focal", str(photo["focal"]),
                 "--json", str(hits)]) == 0
    assert "located in studio" in capsys.readouterr().out
    ranked = json.loads(hits.read_text())
    assert ranked[0]["scene"] == "studio" and isinstance(ranked[0]["score"], float)
    pose = np.array(ranked[0]["pose"])
    assert pose.shape == (4, 4) and np.linalg.norm(pose[:3, 3] - photo["c2w"][:3, 3]) < 0.5

    dups = tmp_path / "dups.json"
    assert main(["query", "--db", str(db), "--duplicates", "--json", str(dups)]) == 0
    assert "no results: no two scenes share" in capsys.readouterr().out and json.loads(dups.read_text()) == []

    words = tmp_path / "words.json"
    assert main(["query", "--db", str(db), "--text", "an indoor room with a brick wall", "--top-k", "2",
                 "--json", str(words)]) == 0
    ranked = json.loads(words.read_text())
    assert sorted(r["scene"] for r in ranked) == ["garden", "studio"] and ranked[0]["score"] >= ranked[1]["score"]

    assert main(["index", "--db", str(db), "--remove", "garden"]) == 0
    assert "removed garden" in capsys.readouterr().out
    assert main(["query", "--db", str(db), "--duplicates"]) == 0
    assert "fewer than two scenes" in capsys.readouterr().out


def test_bad_inputs_are_one_clear_line(scenes, tmp_path, capsys):
    root, photo = scenes
    missing = tmp_path / "none.db"
    refused(capsys, ["query", "--db", missing, "--text", "a room"], "none.db", "no such repository")
    assert not missing.exists()
    notes = tmp_path / "notes.db"
    notes.write_text("my notes\n")
    refused(capsys, ["index", root / "studio", "--db", notes], "notes.db", "not a manyview repository")
    assert notes.read_text() == "my notes\n"
    line = refused(capsys, ["query", "--db", "postgresql://ann:hunter2@127.0.0.1:1/scenes", "--duplicates"],
                   "postgresql://ann:***@127.0.0.1:1/scenes", "cannot connect to PostgreSQL")
    assert "hunter2" not in line
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(photo["path"].read_bytes())
    db = tmp_path / "scenes.db"
    refused(capsys, ["index", photos, "--db", db], "photos", "manyview reconstruct")
    assert not db.exists()  # no repository made for nothing
    refused(capsys, ["index", tmp_path / "nowhere", "--db", db], "nowhere", "no such file or folder")
    refused(capsys, ["index", "--db", db], "nothing to do")
    refused(capsys, ["index", root / "studio", root / "garden", "--db", db, "--name", "one"], "--name")
    refused(capsys, ["query", "--db", db, "--image", photo["path"], "--text", "a room"], "exactly one of")
    refused(capsys, ["query", "--db", db, "--image", tmp_path / "nope.jpg"], "nope.jpg", "no such image file")
    refused(capsys, ["query", "--db", db, "--duplicates", "--top-k", "0"], "--top-k")
