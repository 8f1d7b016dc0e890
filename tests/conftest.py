"""Suite-wide settings.

CI runs the suite with two xdist workers on two cores; one torch thread per worker avoids oversubscription,
which makes tiny tensor operations many times slower.
"""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MANYVIEW_QUIET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (reference data and parity fixtures); skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    return SHARED
