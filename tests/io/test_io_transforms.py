"""transforms.json: round trips, conventions, NeRF-synthetic files, depth and masks, missing keys."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from manyview.errors import ManyviewError
from manyview.io.images import ImageLoadPolicy
from manyview.io.pixel_maps import write_depth, write_mask
from manyview.io.transforms_json import parse_transforms_json, read_transforms_json, write_transforms_json
from manyview.scene import Cameras


def _cameras(n: int, shared: bool, seed: int = 0) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64) * 3
    f = torch.tensor([60.0, 62.0, 15.5, 12.25], dtype=torch.float64).repeat(n, 1)
    if not shared:
        f = f + torch.rand(n, 4, generator=g, dtype=torch.float64)
    return Cameras.look_at(eye, torch.zeros(n, 3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0]).double(), f,
                           torch.tensor([24, 32]))


@pytest.mark.parametrize("shared", [True, False])
def test_round_trip(tmp_path, shared):
    cams = _cameras(4, shared)
    path = write_transforms_json(tmp_path / "transforms.json", cams, [f"images/{i}.png" for i in range(4)])
    data = json.loads(path.read_text())
    assert ("fl_x" in data) == shared and ("fl_x" in data["frames"][0]) == (not shared)
    meta = parse_transforms_json(path)
    torch.testing.assert_close(meta.cameras.c2w, cams.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(meta.cameras.fxfycxcy, cams.fxfycxcy, atol=1e-5, rtol=0)
    assert torch.equal(meta.cameras.image_size, cams.image_size)
    assert meta.file_paths == [f"images/{i}.png" for i in range(4)]


def test_opengl_convention(tmp_path):
    """An identity transform_matrix is a camera at the origin looking down world -z with world +y up in the image."""
    (tmp_path / "transforms.json").write_text(json.dumps({
        "fl_x": 10, "w": 8, "h": 6, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}))
    meta = parse_transforms_json(tmp_path / "transforms.json")
    torch.testing.assert_close(meta.cameras.c2w[0], torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])).double())
    torch.testing.assert_close(meta.cameras.fxfycxcy[0], torch.tensor([10.0, 10.0, 4.0, 3.0]).double())


def test_nerf_synthetic_style(tmp_path):
    (tmp_path / "train").mkdir()
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "r_0.png")
    angle = 0.7
    (tmp_path / "transforms_train.json").write_text(json.dumps({
        "camera_angle_x": angle,
        "frames": [{"file_path": "./train/r_0", "rotation": 0.0, "transform_matrix": np.eye(4).tolist()}]}))
    views = read_transforms_json(tmp_path / "transforms_train.json")
    fx = 0.5 * 10 / math.tan(0.5 * angle)
    torch.testing.assert_close(views.cameras.fxfycxcy[0], torch.tensor([fx, fx, 5.0, 4.0]))
    assert views.names == ["train/r_0.png"]
    np.testing.assert_allclose(views.images[0, :, 0, 0].numpy(), [1, 0, 0])
    np.testing.assert_allclose(views.images[0, :, 7, 0].numpy(), [1, 1, 1])  # composited on white


def test_depth_and_masks_follow_the_image_policy(tmp_path):
    cams = _cameras(2, shared=True)
    (tmp_path / "images").mkdir()
    depth = torch.arange(24 * 32, dtype=torch.float32).reshape(24, 32) / 100
    mask = torch.zeros(24, 32, dtype=torch.bool)
    mask[:, 16:] = True
    for i in range(2):
        Image.fromarray(np.full((24, 32, 3), 50 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        write_depth(tmp_path / "depth" / f"{i}.png", depth)  # 16-bit millimetres, nerfstudio's default
        write_mask(tmp_path / "masks" / f"{i}.png", mask)
    write_transforms_json(tmp_path / "transforms.json", cams, [f"images/{i}.png" for i in range(2)],
                          depth_paths=[f"depth/{i}.png" for i in range(2)],
                          mask_paths=[f"masks/{i}.png" for i in range(2)])
    views = read_transforms_json(tmp_path / "transforms.json")
    assert (views.depths[0] - depth).abs().max() < 1e-3
    assert torch.equal(views.masks[1], mask)

    small = read_transforms_json(tmp_path / "transforms.json", ImageLoadPolicy(size=(12, 12)))
    assert small.depths.shape == (2, 12, 12) and small.masks.shape == (2, 12, 12)
    # 24x32 -> 12x16, centre crop 12 columns from 2: output (i, j) samples input (2i + 1, 2(j + 2) + 1).
    assert (small.depths[0] - depth[1::2, 5:29:2]).abs().max() < 1e-3
    assert torch.equal(small.masks[0], mask[1::2, 5:29:2])
    torch.testing.assert_close(small.cameras.fxfycxcy[0], cams.fxfycxcy[0].float() / 2 - torch.tensor([0, 0, 2, 0]))


def _write(tmp_path, meta) -> str:
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(meta))
    return path


def test_missing_keys_are_named(tmp_path):
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}
    cases = [
        ({"fl_x": 1, "w": 4, "h": 4}, "missing key 'frames'"),
        ({"fl_x": 1, "w": 4, "h": 4, "frames": [frame, {"file_path": "b.png"}]},
         r"frame 1 \(b.png\): missing key 'transform_matrix'"),
        ({"w": 4, "h": 4, "frames": [frame]}, r"frame 0 \(a.png\): missing key 'fl_x' \(or 'camera_angle_x'\)"),
        ({"fl_x": 1, "frames": [frame]}, "missing key 'w'"),
        ({"fl_x": 1, "w": 4, "h": 4, "frames": [{"transform_matrix": frame["transform_matrix"]}]},
         "frame 0: missing key 'file_path'"),
        ({"fl_x": 1, "w": 4, "h": 4, "frames": [dict(frame, transform_matrix=[[1, 0], [0, 1]])]}, "4x4"),
        ({"fl_x": "ten", "w": 4, "h": 4, "frames": [frame]}, "'fl_x' must be a finite number"),
        ({"fl_x": 1, "w": 4, "h": 4, "frames": []}, "non-empty"),
    ]
    for meta, message in cases:
        path = _write(tmp_path, meta)
        with pytest.raises(ManyviewError, match=message) as e:
            parse_transforms_json(path)
        assert str(path) in str(e.value)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(ManyviewError, match="invalid JSON at line 1"):
        parse_transforms_json(tmp_path / "transforms.json")
    with pytest.raises(ManyviewError, match="not found"):
        parse_transforms_json(tmp_path / "nothing.json")


def test_missing_image_is_named(tmp_path):
    path = write_transforms_json(tmp_path / "transforms.json", _cameras(1, True), ["images/gone.png"])
    with pytest.raises(ManyviewError, match="gone.png"):
        read_transforms_json(path)


def test_distortion_warns(tmp_path):
    path = _write(tmp_path, {"fl_x": 1, "w": 4, "h": 4, "k1": 0.1,
                             "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.warns(UserWarning, match="distortion"):
        meta = parse_transforms_json(path)
    assert meta.distorted == [0]
