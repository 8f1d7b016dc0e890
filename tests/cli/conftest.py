"""Small inputs shared by the command-line tests: a posed dataset and a splat PLY with its cameras."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A manyview dataset of 8 views at 24 x 32 (points included)."""
    from manyview.io.dataset import write_dataset
    from manyview.synth import generate

    root = tmp_path_factory.mktemp("tiny_dataset") / "ds"
    _, views = generate(0, kind="object", num_views=8, height=24, width=32)
    write_dataset(root, views, points=views.point_cloud(max_points=500))
    return root


@pytest.fixture(scope="session")
def tiny_splat(tmp_path_factory, tiny_dataset) -> Path:
    """splat.ply (200 random Gaussians in the dataset's camera box) with transforms.json beside it, as `splat`
    leaves them."""
    from manyview.io.dataset import load_dataset
    from manyview.io.transforms_json import write_transforms_json
    from manyview.splat import random_in_box, write_ply

    folder = tmp_path_factory.mktemp("tiny_splat")
    cams = load_dataset(tiny_dataset).cameras
    centers = cams.centers.double()
    write_ply(folder / "splat.ply", random_in_box(200, centers.amin(0) * 0.3, centers.amax(0) * 0.3, sh_degree=0,
                                                  opacity=0.5))
    write_transforms_json(folder / "transforms.json", cams, [f"{i:05d}.png" for i in range(len(cams))])
    return folder / "splat.ply"
