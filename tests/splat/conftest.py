"""The splatting tests' fixtures: the scene builders of splat_scenes.py."""

import pytest

from splat_scenes import make_cameras, make_scene, pair_statistics


@pytest.fixture
def statistics():
    return pair_statistics


@pytest.fixture
def scene():
    return make_scene


@pytest.fixture
def cameras():
    return make_cameras
