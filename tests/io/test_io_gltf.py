"""GLB writer: parse the file back by the glTF 2.0 rules and check structure and values."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from manyview.errors import ManyviewError
from manyview.io.gltf import frustum_vertices, write_glb
from manyview.scene import Cameras, PointCloud

_DTYPES = {5126: np.float32, 5121: np.uint8, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


def _parse(path):
    """Minimal GLB reader following the spec: 12-byte header, JSON chunk, BIN chunk, all 4-byte aligned."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    blob = data[28 + json_len:28 + json_len + bin_len]
    assert 28 + json_len + bin_len == length
    assert doc["buffers"][0]["byteLength"] <= bin_len

    def accessor(i):
        acc = doc["accessors"][i]
        view = doc["bufferViews"][acc["bufferView"]]
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= doc["buffers"][0]["byteLength"]
        arr = np.frombuffer(blob, dtype=_DTYPES[acc["componentType"]], count=acc["count"] * _WIDTH[acc["type"]],
                            offset=view["byteOffset"])
        return acc, arr.reshape(acc["count"], -1)

    return doc, accessor


def _scene():
    g = torch.Generator().manual_seed(0)
    cams = Cameras.look_at(torch.randn(3, 3, generator=g) * 3, torch.zeros(3, 3), torch.tensor([0.0, -1.0, 0.0]),
                           torch.tensor([40.0, 40.0, 16.0, 12.0]), torch.tensor([24, 32]))
    pts = PointCloud(torch.randn(200, 3, generator=g), torch.randint(0, 256, (200, 3), generator=g).float() / 255)
    return cams, pts


def test_points_and_frusta(tmp_path):
    cams, pts = _scene()
    doc, accessor = _parse(write_glb(tmp_path / "scene.glb", pts, cams, frustum_size=0.5))
    assert doc["asset"]["version"] == "2.0"
    points_prim, lines_prim = doc["meshes"][0]["primitives"]
    assert points_prim["mode"] == 0 and lines_prim["mode"] == 1

    acc, pos = accessor(points_prim["attributes"]["POSITION"])
    flip = np.array([1.0, -1.0, -1.0], np.float32)  # OpenCV world -> glTF y-up
    np.testing.assert_allclose(pos, pts.xyz.numpy() * flip, rtol=0, atol=1e-6)
    np.testing.assert_allclose(acc["min"], pos.min(0), atol=1e-6)
    np.testing.assert_allclose(acc["max"], pos.max(0), atol=1e-6)
    acc, col = accessor(points_prim["attributes"]["COLOR_0"])
    assert acc["normalized"] and col.shape == (200, 4)
    np.testing.assert_array_equal(col[:, :3], np.round(pts.rgb.numpy() * 255))

    acc, fpos = accessor(lines_prim["attributes"]["POSITION"])
    assert fpos.shape == (15, 3) and acc["min"] == pytest.approx(fpos.min(0).tolist(), abs=1e-6)
    _, idx = accessor(lines_prim["indices"])
    assert idx.shape == (48, 1) and idx.max() == 14
    np.testing.assert_allclose(fpos[::5], cams.centers.numpy() * flip, atol=1e-5)  # apexes at the centres
    verts = frustum_vertices(cams, 0.5)
    depth = np.einsum("nkj,nj->nk", verts[:, 1:] - verts[:, :1], cams.R[:, :, 2].double().numpy())
    np.testing.assert_allclose(depth, 0.5, atol=1e-9)  # image corners at the requested depth


def test_only_points_only_cameras_and_nothing(tmp_path):
    cams, pts = _scene()
    doc, _ = _parse(write_glb(tmp_path / "p.glb", points=PointCloud(pts.xyz)))
    prim = doc["meshes"][0]["primitives"]
    assert len(prim) == 1 and "COLOR_0" not in prim[0]["attributes"]
    doc, _ = _parse(write_glb(tmp_path / "c.glb", cameras=cams[0]))  # a single, unbatched camera
    assert doc["meshes"][0]["primitives"][0]["mode"] == 1
    doc, accessor = _parse(write_glb(tmp_path / "k.glb", PointCloud(pts.xyz, pts.rgb), opencv_to_gltf=False))
    np.testing.assert_allclose(accessor(0)[1], pts.xyz.numpy(), atol=1e-6)
    with pytest.raises(ManyviewError, match="nothing to write"):
        write_glb(tmp_path / "n.glb")
    assert not (tmp_path / "n.glb").exists()


def test_non_finite_points_are_dropped(tmp_path):
    xyz = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [1.0, 2.0, 3.0]])
    doc, accessor = _parse(write_glb(tmp_path / "f.glb", PointCloud(xyz, torch.rand(3, 3))))
    acc, pos = accessor(0)
    assert acc["count"] == 2 and np.isfinite(acc["min"]).all() and np.isfinite(acc["max"]).all()
