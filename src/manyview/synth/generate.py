"""One-call scene + views: what tests, training streams and demos ask for."""

from __future__ import annotations

from manyview.scene import Views
from manyview.synth.render import MaskMode, render
from manyview.synth.scene import Scene, SceneConfig, SceneKind, make_scene
from manyview.synth.trajectories import sample_cameras

SAMPLE_SEED = 1  # the embedded sample scene: an object scene whose six views all register with COLMAP
SAMPLE_ARC_DEG = 90.0  # its views span a quarter orbit: ~15 degrees apart, easy for SIFT
# The photos of ``manyview run --sample``: the same object seen from 16 views on a half orbit (12 degrees apart, so
# COLMAP registers all of them), small enough for a splat to train in a couple of minutes on 2 cores.
SAMPLE_PHOTOS_VIEWS, SAMPLE_PHOTOS_SIZE, SAMPLE_PHOTOS_ARC_DEG = 16, 192, 180.0


def generate(
    seed: int, kind: SceneKind = "object", num_views: int = 8, height: int = 256, width: int = 256, *,
    supersample: int = 1, mask: MaskMode = "geometry", config: SceneConfig | None = None, camera_seed: int = 0,
    **camera_kwargs,
) -> tuple[Scene, Views]:
    """Scene ``seed`` of ``kind`` and ``num_views`` views along its trajectory (see trajectories.sample_cameras).

    ``camera_seed`` draws another trajectory through the same scene; ``camera_kwargs`` go to the trajectory.
    """
    scene = make_scene(seed, kind, config)
    cameras = sample_cameras(scene, num_views, height, width, camera_seed, **camera_kwargs)
    return scene, render(scene, cameras, supersample=supersample, mask=mask)


def sample_scene(num_views: int = 6, height: int = 256, width: int = 256, supersample: int = 2) -> tuple[Scene, Views]:
    """The small sample scene used by the README's first command and the demos (fixed seed, made on demand).

    Six 256 x 256 views on a quarter orbit by default: COLMAP registers all of them.
    """
    return generate(SAMPLE_SEED, "object", num_views, height, width, supersample=supersample,
                    arc_deg=SAMPLE_ARC_DEG)


def sample_photos(supersample: int = 2) -> tuple[Scene, Views]:
    """The photos of ``manyview run --sample`` (and ``manyview synth --kind sample-photos``): the sample scene's
    object from 16 views of 192 x 192 pixels on a half orbit, so that the held-out views see what training views
    saw from both sides."""
    return generate(SAMPLE_SEED, "object", SAMPLE_PHOTOS_VIEWS, SAMPLE_PHOTOS_SIZE, SAMPLE_PHOTOS_SIZE,
                    supersample=supersample, arc_deg=SAMPLE_PHOTOS_ARC_DEG)
