"""Procedural scenes with exact ground truth: the data source for tests, training streams and benchmarks.

>>> from manyview.synth import generate
>>> scene, views = generate(seed=3, kind="object", num_views=8, height=256, width=256)

``views`` is a ``manyview.scene.Views`` with images, cameras, z-depths, world normals and masks.
:mod:`manyview.synth.samples` holds the held-out evaluation seeds and the ground-truth sample dicts that training and
evaluation share.
"""

from manyview.synth.generate import SAMPLE_SEED, generate, sample_photos, sample_scene
from manyview.synth.render import render
from manyview.synth.scene import Material, Primitive, Scene, SceneConfig, Sky, make_scene
from manyview.synth.trajectories import orbit_cameras, sample_cameras, sample_intrinsics, walkthrough_cameras

__all__ = [
    "SAMPLE_SEED", "Material", "Primitive", "Scene", "SceneConfig", "Sky", "generate", "make_scene",
    "orbit_cameras", "render", "sample_cameras", "sample_intrinsics", "sample_photos", "sample_scene", "walkthrough_cameras",
]
