"""Fixtures of the repository tests (see repo_fixtures.py).

numba's OpenMP threading layer (the synthetic renderer) leaves threads spinning that slow torch's convolutions
many times over on two cores; the workqueue layer does not. Chosen here before numba's first parallel launch (a
suite-wide choice belongs in tests/conftest.py)."""

import os

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
try:
    import numba

    numba.config.THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]
except ImportError:  # pragma: no cover
    pass

from repo_fixtures import db, entries, indexer, pg_server, rendered, scene_folders  # noqa: E402, F401
