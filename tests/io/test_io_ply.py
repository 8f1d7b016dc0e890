"""Point cloud PLY: exact round trips, ASCII input, bad or missing properties, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from manyview.errors import ManyviewError
from manyview.io.ply import read_ply, write_ply
from manyview.scene import PointCloud


def _cloud(n=100, normals=True, confidence=True) -> PointCloud:
    g = torch.Generator().manual_seed(0)
    nrm = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) if normals else None
    return PointCloud(torch.randn(n, 3, generator=g) * 10, torch.randint(0, 256, (n, 3), generator=g).float() / 255,
                      torch.rand(n, generator=g) * 5 if confidence else None, nrm)


@pytest.mark.parametrize("text", [False, True])
def test_round_trip_identical(tmp_path, text):
    cloud = _cloud()
    path = write_ply(tmp_path / "p.ply", cloud, text=text)
    back = read_ply(path)
    if text:
        torch.testing.assert_close(back.xyz, cloud.xyz)  # ASCII floats round-trip float32 closely
    else:
        assert torch.equal(back.xyz, cloud.xyz) and torch.equal(back.normals, cloud.normals)
        assert torch.equal(back.confidence, cloud.confidence)
    assert torch.equal(back.rgb, cloud.rgb)  # k / 255 survives uchar exactly


def test_binary_layout(tmp_path):
    path = write_ply(tmp_path / "p.ply", _cloud(5))
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    props = [line.split()[1:] for line in header.splitlines() if line.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"],
                     ["uchar", "blue"], ["float", "nx"], ["float", "ny"], ["float", "nz"], ["float", "confidence"]]
    assert "element vertex 5" in header
    bare = read_ply(write_ply(tmp_path / "bare.ply", PointCloud(torch.zeros(3, 3))))
    assert bare.rgb is None and bare.normals is None and bare.confidence is None and len(bare) == 3


def _write_raw(path, fields, n=4, text=False):
    data = np.zeros(n, dtype=fields)
    PlyData([PlyElement.describe(data, "vertex")], text=text).write(str(path))
    return path


def test_other_producers(tmp_path):
    # ASCII with float colours in [0, 1] and a 'conf' property, as some tools write
    path = _write_raw(tmp_path / "a.ply", [("x", "f8"), ("y", "f8"), ("z", "f8"), ("red", "f4"), ("green", "f4"),
                                           ("blue", "f4"), ("conf", "f4")], text=True)
    cloud = read_ply(path)
    assert cloud.xyz.dtype == torch.float32 and cloud.rgb.shape == (4, 3) and cloud.confidence.shape == (4,)


def test_bad_and_missing_properties_are_named(tmp_path):
    with pytest.raises(ManyviewError, match="lacks the properties z"):
        read_ply(_write_raw(tmp_path / "noz.ply", [("x", "f4"), ("y", "f4")]))
    with pytest.raises(ManyviewError, match="normal properties incomplete: has nx, needs nx, ny, nz"):
        read_ply(_write_raw(tmp_path / "nx.ply", [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4")]))
    with pytest.raises(ManyviewError, match="colour properties incomplete"):
        read_ply(_write_raw(tmp_path / "red.ply", [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")]))
    face = tmp_path / "face.ply"
    PlyData([PlyElement.describe(np.zeros(2, dtype=[("a", "f4")]), "face")]).write(str(face))
    with pytest.raises(ManyviewError, match="no 'vertex' element"):
        read_ply(face)
    garbage = tmp_path / "garbage.ply"
    garbage.write_text("this is not a ply file")
    with pytest.raises(ManyviewError, match="PLY") as e:
        read_ply(garbage)
    assert str(garbage) in str(e.value)
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    with pytest.raises(ManyviewError):
        read_ply(empty)
    good = write_ply(tmp_path / "good.ply", _cloud(50))
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ManyviewError, match="PLY"):
        read_ply(truncated)
    with pytest.raises(ManyviewError, match="not found"):
        read_ply(tmp_path / "missing.ply")


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "p.ply"

    def broken(self, stream):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(PlyData, "write", broken)
    with pytest.raises(KeyboardInterrupt):
        write_ply(path, _cloud(10))
    assert list(tmp_path.iterdir()) == []
