"""3DGS PLY files: round trips, the INRIA and gsplat layouts, and the errors for malformed files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from manyview.errors import ManyviewError
from manyview.splat import Gaussians, read_ply, write_ply
from manyview.splat.ply import property_names


def _random(n: int, degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    return Gaussians(r(n, 3), r(n, 3), r(n, 4), r(n), r(n, 1, 3), r(n, (degree + 1) ** 2 - 1, 3))


def _write_raw(path, columns: dict[str, np.ndarray], text: bool = False):
    n = len(next(iter(columns.values())))
    vertex = np.empty(n, dtype=[(name, "<f4") for name in columns])
    for name, col in columns.items():
        vertex[name] = col
    PlyData([PlyElement.describe(vertex, "vertex")], text=text, byte_order="<").write(str(path))


def _inria_columns(g: Gaussians, normals: bool) -> dict[str, np.ndarray]:
    """Columns as INRIA's save_ply builds them: f_rest transposed to (P, 3, K-1) before flattening."""
    n = len(g)
    rest = g.sh_rest.transpose(1, 2).reshape(n, -1).numpy()
    flat = np.concatenate([g.means.numpy()] + ([np.zeros((n, 3), np.float32)] if normals else [])
                          + [g.sh_dc[:, 0].numpy(), rest, g.opacity_logits[:, None].numpy(), g.log_scales.numpy(),
                             g.quats.numpy()], axis=1)
    return {name: flat[:, i] for i, name in enumerate(property_names(g.sh_degree, normals=normals))}


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = _random(17, degree)
    path = tmp_path / "scene.ply"
    write_ply(path, g)
    back = read_ply(path)
    assert back.sh_degree == degree
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name
    assert [f.name for f in PlyData.read(str(path))["vertex"].properties] == property_names(degree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.ply"]  # the atomic write left no temporary


def test_written_file_is_binary_little_endian_float32(tmp_path):
    path = tmp_path / "g.ply"
    write_ply(path, _random(3, 3))
    header = path.read_bytes()[:120].decode("latin-1")
    assert "format binary_little_endian 1.0" in header and "element vertex 3" in header
    assert "property float f_rest_44" in path.read_bytes()[:4000].decode("latin-1")
    assert path.stat().st_size > 3 * 62 * 4  # 62 floats per Gaussian with normals


@pytest.mark.parametrize("normals", [True, False], ids=["inria-with-normals", "gsplat-without-normals"])
def test_reads_both_common_layouts(tmp_path, normals):
    g = _random(9, 3, seed=1)
    path = tmp_path / "layout.ply"
    _write_raw(path, _inria_columns(g, normals))
    back = read_ply(path)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name


def test_f_rest_is_channel_major(tmp_path):
    # f_rest_i = 100 * channel + coefficient: reading must put it at sh_rest[:, coefficient - 1, channel]
    g = _random(2, 1)
    cols = _inria_columns(g, normals=True)
    for i in range(9):
        cols[f"f_rest_{i}"] = np.full(2, 100 * (i // 3) + (i % 3) + 1, np.float32)
    path = tmp_path / "order.ply"
    _write_raw(path, cols)
    rest = read_ply(path).sh_rest
    for k in range(3):
        for c in range(3):
            assert rest[0, k, c] == 100 * c + k + 1


def test_ascii_ply_loads(tmp_path):
    g = _random(4, 1, seed=2)
    path = tmp_path / "ascii.ply"
    _write_raw(path, _inria_columns(g, normals=True), text=True)
    torch.testing.assert_close(read_ply(path).means, g.means)


def test_zero_gaussians(tmp_path):
    path = tmp_path / "empty.ply"
    write_ply(path, Gaussians.empty(sh_degree=2))
    back = read_ply(path)
    assert len(back) == 0 and back.sh_degree == 2


def test_missing_property_is_named(tmp_path):
    cols = _inria_columns(_random(3, 1), normals=True)
    del cols["scale_1"], cols["opacity"]
    path = tmp_path / "missing.ply"
    _write_raw(path, cols)
    with pytest.raises(ManyviewError, match="missing properties opacity, scale_1") as err:
        read_ply(path)
    assert str(path) in str(err.value)


def test_unexpected_property_is_named(tmp_path):
    cols = _inria_columns(_random(3, 1), normals=False)
    cols["red"] = np.zeros(3, np.float32)
    path = tmp_path / "extra.ply"
    _write_raw(path, cols)
    with pytest.raises(ManyviewError, match="unexpected properties red"):
        read_ply(path)


def test_wrong_number_of_sh_coefficients(tmp_path):
    cols = _inria_columns(_random(3, 1), normals=False)
    del cols["f_rest_8"]
    path = tmp_path / "rest.ply"
    _write_raw(path, cols)
    with pytest.raises(ManyviewError, match="8 f_rest"):
        read_ply(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_rejected(tmp_path, bad):
    cols = _inria_columns(_random(5, 0), normals=True)
    cols["rot_2"][3] = bad
    path = tmp_path / "nan.ply"
    _write_raw(path, cols)
    with pytest.raises(ManyviewError, match="rot_2 has 1 NaN or infinite values .first at vertex 3"):
        read_ply(path)


def test_not_a_ply_and_missing_file(tmp_path):
    path = tmp_path / "junk.ply"
    path.write_bytes(b"this is not a ply file\n")
    with pytest.raises(ManyviewError, match="not a readable PLY"):
        read_ply(path)
    with pytest.raises(ManyviewError, match="file not found"):
        read_ply(tmp_path / "nope.ply")
