"""`manyview render SCENE.ply --orbit N` on a 3DGS PLY with no cameras (one made elsewhere): the orbit circles the
opaque Gaussians and its frames show them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manyview.cli.main import main

from cli_helpers import refused


@pytest.fixture(scope="module")
def lonely_splat(tmp_path_factory) -> Path:
    """scene.ply alone in its folder: opaque Gaussians on the surfaces of a synthetic object scene's objects (as
    seen by 8 cameras), plus what optimisation leaves behind: 300 faint floaters spread 30 m around and 20 opaque
    stragglers 60 m away."""
    from manyview.geometry.projection import depth_to_pointmap
    from manyview.scene import PointCloud
    from manyview.splat import Gaussians, from_points, write_ply
    from manyview.synth import make_scene, orbit_cameras, render

    scene = make_scene(0, "object")
    cams = orbit_cameras(scene, 8, 48, 48, seed=0)
    views = render(scene, cams, mask="objects")
    on_objects = views.masks.bool()
    xyz = depth_to_pointmap(views.depths, cams.fxfycxcy, cams.c2w)[on_objects]
    rgb = views.images.permute(0, 2, 3, 1)[on_objects]
    objects = from_points(PointCloud(xyz, rgb).subsample(3000, 0), sh_degree=0, opacity=0.95)
    g = torch.Generator().manual_seed(0)
    floaters = from_points(torch.randn(300, 3, generator=g) * 30, sh_degree=0, opacity=0.02)
    stragglers = from_points(torch.randn(20, 3, generator=g) * 40 + 60, sh_degree=0, opacity=0.9)
    small = {"log_scales": torch.full((300, 3), -4.0)}, {"log_scales": torch.full((20, 3), -4.0)}
    folder = tmp_path_factory.mktemp("lonely")
    write_ply(folder / "scene.ply", Gaussians.cat([objects, floaters.replace(**small[0]),
                                                   stragglers.replace(**small[1])]))
    return folder / "scene.ply"


def _frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)).astype(np.float64) for p in sorted(folder.glob("*.png"))]


def test_render_orbits_a_ply_without_cameras_and_every_frame_shows_the_scene(lonely_splat, tmp_path, capsys):
    out = tmp_path / "renders"
    assert main(["render", str(lonely_splat), "--orbit", "6", "--out", str(out), "--width", "48", "--height",
                 "40"]) == 0
    frames = _frames(out)
    assert len(frames) == 6 and all(f.shape == (40, 48, 3) for f in frames)
    shown = [f.max(-1) > 8 for f in frames]  # not the black background
    share = [float(s.mean()) for s in shown]
    middle = [float(s[12:28, 14:34].mean()) for s in shown]  # the middle third of the frame
    assert min(share) >= 0.15, share  # a sizeable share of every frame (the objects stand on 25 % of it or so)
    assert min(middle) >= 0.6, middle  # and they are in the middle, not cut off at an edge
    record = json.loads((out / "render.json").read_text())
    assert record["cameras"] == "orbit around the opaque Gaussians' bounds" and record["size"] == [40, 48]
    # the frames differ: the orbit goes round the scene
    assert np.abs(frames[0] - frames[3]).mean() > 5


def test_render_orbit_without_cameras_defaults_to_512_square_and_takes_up(lonely_splat, tmp_path):
    out = tmp_path / "square"
    assert main(["render", str(lonely_splat), "--orbit", "1", "--out", str(out), "--width", "24"]) == 0
    assert _frames(out)[0].shape == (24, 24, 3)  # one size given: square
    from manyview.splat.bounds import ORBIT_SIZE

    assert ORBIT_SIZE == (512, 512)  # with neither
    # a different up direction turns the orbit: the first frame changes
    upright, sideways = tmp_path / "z", tmp_path / "x"
    assert main(["render", str(lonely_splat), "--orbit", "2", "--out", str(upright), "--width", "24"]) == 0
    assert main(["render", str(lonely_splat), "--orbit", "2", "--out", str(sideways), "--width", "24",
                 "--up", "1", "0", "0"]) == 0
    assert np.abs(_frames(upright)[0] - _frames(sideways)[0]).mean() > 1


def test_render_without_cameras_or_orbit_says_what_to_pass(lonely_splat, tmp_path, capsys):
    refused(capsys, ["render", lonely_splat, "--out", tmp_path / "r"], "no cameras", "--cameras", "--orbit")
    refused(capsys, ["render", lonely_splat, "--orbit", 2, "--up", 0, 0, 0, "--out", tmp_path / "r"],
            "--up must be a non-zero direction")


def test_render_orbit_with_cameras_beside_the_ply_uses_them(lonely_splat, tiny_splat, tmp_path):
    """With the transforms.json that `manyview splat` writes, the orbit follows those cameras (their image size),
    not the Gaussians' box."""
    folder = tmp_path / "with_cameras"
    folder.mkdir()
    shutil.copy(lonely_splat, folder / "scene.ply")
    shutil.copy(tiny_splat.parent / "transforms.json", folder / "transforms.json")
    out = tmp_path / "r"
    assert main(["render", str(folder / "scene.ply"), "--orbit", "2", "--out", str(out)]) == 0
    record = json.loads((out / "render.json").read_text())
    assert record["cameras"] == str(folder / "transforms.json") and record["size"] == [24, 32]
