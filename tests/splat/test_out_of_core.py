"""Scenes larger than memory: a 3DGS PLY read in place and rendered chunk by chunk under a byte budget smaller
than the file equals the in-memory render, in one pass or in bands, and says which budget it needs."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from manyview.cli.main import main
from manyview.errors import ManyviewError
from manyview.splat import Gaussians, read_ply, render, write_ply
from manyview.splat.bounds import splat_orbit
from manyview.splat.mapped_ply import MappedGaussians
from manyview.splat.out_of_core import render_out_of_core
from manyview.splat.ply import property_names

from splat_scenes import make_cameras, make_scene

HEIGHT, WIDTH = 48, 64


def _scene(n: int, degree: int, seed: int = 0) -> Gaussians:
    """make_scene's awkward cases (a huge Gaussian, sub-pixel ones, one behind the cameras, some off the border),
    the rest smaller and spread four times wider, so that a camera sees a fifth of them, over all its tile rows."""
    g = make_scene(n, seed=seed, degree=degree, dtype=torch.float32)
    small, wide = g.log_scales.clone(), g.means.clone()
    small[14:] -= 1.8
    wide[14:, :2] *= 4
    return g.replace(log_scales=small, means=wide)


@pytest.fixture(scope="module")
def scene_ply(tmp_path_factory):
    path = tmp_path_factory.mktemp("ooc") / "scene.ply"
    write_ply(path, _scene(12000, degree=3))
    return path


def _assert_same_render(out, ref):
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth, ref.depth, atol=1e-5, rtol=1e-6)


def test_streamed_render_of_a_manyview_ply_equals_the_in_memory_render(scene_ply):
    cams = make_cameras(2, HEIGHT, WIDTH, dtype=torch.float32)
    background = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.5, 0.0]])
    ref = render(read_ply(scene_ply), cams, background=background, backend="cpu")
    store = MappedGaussians(scene_ply)
    file_bytes = scene_ply.stat().st_size
    # whole, in one pass; in small chunks under a budget below the file; and in bands of tile rows
    for budget, chunk, one_pass in ((10**9, None, True), (file_bytes * 3 // 4, 600, True),
                                    (file_bytes // 3, 300, False)):
        out = render_out_of_core(store, cams, background=background, max_memory=budget, chunk_size=chunk)
        _assert_same_render(out, ref)
        assert out.peak_bytes <= budget
        assert (out.bands == (1, 1)) == one_pass, out.bands
        assert chunk is None or out.chunk_size <= chunk
        # each camera kept the splats it bins: among those the projection keeps, and not the one behind it
        kept_by_projection = [int((r != 0).any(-1).sum()) for r in ref.radii]
        assert all(0 < v <= k < len(store) for v, k in zip(out.visible, kept_by_projection))


def test_streamed_render_of_a_ply_in_another_property_order(tmp_path):
    """A gsplat-style file: no normals, properties in an order of their own, SH degree 1."""
    g = _scene(24000, degree=1, seed=3)
    write_ply(tmp_path / "ordered.ply", g)
    ordered = PlyData.read(str(tmp_path / "ordered.ply"))["vertex"].data
    names = [n for n in property_names(1, normals=False)]
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    assert shuffled != names
    vertex = np.empty(len(ordered), dtype=[(n, "<f4") for n in shuffled])
    for n in shuffled:
        vertex[n] = ordered[n]
    path = tmp_path / "shuffled.ply"
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))

    store = MappedGaussians(path)
    assert store.sh_degree == 1 and store.nbytes == 24000 * 4 * len(names)
    whole = store.read()
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(getattr(whole, name), getattr(read_ply(path), name)), name
    cams = make_cameras(3, 48, 64, dtype=torch.float32)
    ref = render(read_ply(path), cams, backend="cpu")
    bands = []
    # at SH degree 1 a Gaussian's row (92 B) is smaller than what rasterising a splat takes: bands below the file
    for budget in (10**8, path.stat().st_size * 3 // 5):
        out = render_out_of_core(store, cams, max_memory=budget, chunk_size=None if budget == 10**8 else 400)
        _assert_same_render(out, ref)
        bands.append(out.bands)
    assert bands[0] == (1, 1, 1) and bands[1] != (1, 1, 1), bands  # one pass; bands
    # a lower degree than stored reads fewer coefficients and still matches
    _assert_same_render(render_out_of_core(store, cams, sh_degree=0, max_memory=10**8, chunk_size=7000),
                        render(read_ply(path), cams, sh_degree=0, backend="cpu"))


def test_cameras_that_see_nothing(scene_ply, tmp_path):
    """A camera looking away from the scene, beside two that see it, draws the background as in memory, with its
    records in memory or on disk; a file whose Gaussians are all behind the cameras too."""
    from manyview.scene import Cameras

    seeing = make_cameras(2, HEIGHT, WIDTH, dtype=torch.float32)
    away = Cameras.look_at(torch.tensor([0.0, 20.0, 0.0]), torch.tensor([0.0, 40.0, 0.0]),
                           torch.tensor([0.0, 0.0, 1.0]), seeing.fxfycxcy[0], (HEIGHT, WIDTH))[None]
    cams = Cameras.cat([seeing[:1], away, seeing[1:]])
    background = torch.tensor([0.2, 0.3, 0.4])
    ref = render(read_ply(scene_ply), cams, background=background, backend="cpu")
    assert (ref.alpha[1] == 0).all() and (ref.alpha[0] > 0).any()
    store = MappedGaussians(scene_ply)
    for budget, one_pass in ((10**9, True), (scene_ply.stat().st_size * 2 // 5, False)):
        out = render_out_of_core(store, cams, background=background, max_memory=budget, chunk_size=300)
        _assert_same_render(out, ref)
        assert out.visible[1] == 0 and (out.bands == (1, 1, 1)) == one_pass, out.bands
    g = make_scene(100, degree=1, dtype=torch.float32)
    behind = tmp_path / "behind.ply"
    write_ply(behind, g.replace(means=g.means + torch.tensor([0.0, 0.0, -100.0])))
    out = render_out_of_core(MappedGaussians(behind), seeing, background=background, chunk_size=32)
    _assert_same_render(out, render(read_ply(behind), seeing, background=background, backend="cpu"))
    assert out.visible == (0, 0)


def _smallest(message: str) -> int:
    value, unit = re.search(r"smallest budget that (?:can stream|renders) it is ([\d.]+) (MiB|GiB)", message).groups()
    return math.ceil((float(value) + 0.01) * (1 << (20 if unit == "MiB" else 30)))


def test_a_budget_too_small_says_the_smallest_that_works(scene_ply):
    from manyview.scene import Cameras

    store = MappedGaussians(scene_ply)
    g = read_ply(scene_ply)
    cams = make_cameras(1, HEIGHT, WIDTH, dtype=torch.float32)
    with pytest.raises(ManyviewError, match=r"cannot hold one chunk of 256 Gaussians.*smallest budget that can "
                                            r"stream it is [\d.]+ MiB \(--max-memory 0\.01\)") as e:
        render_out_of_core(store, cams, max_memory=50_000, chunk_size=256)
    smallest = _smallest(str(e.value))
    with pytest.raises(ManyviewError, match="cannot hold one chunk"):
        render_out_of_core(store, cams, max_memory=smallest - 30_000, chunk_size=256)  # a little less does not
    out = render_out_of_core(store, cams, max_memory=smallest, chunk_size=256)  # the budget it names renders
    _assert_same_render(out, render(g, cams, backend="cpu"))
    assert out.bands[0] > 1 and out.peak_bytes <= smallest
    # a camera whose one row of tiles holds nearly every Gaussian: that budget streams the file, but the band
    # cannot be rasterised in it; the error names the budget that renders it
    wide = Cameras(torch.tensor([[6.0, 6.0, 32.0, 8.0]]), cams.c2w, torch.tensor([[16, 64]]))
    with pytest.raises(ManyviewError, match=r"cannot hold one chunk") as e:
        render_out_of_core(store, wide, max_memory=50_000, chunk_size=256)
    streams = _smallest(str(e.value))
    with pytest.raises(ManyviewError, match=r"camera 0: one band of 16 pixel rows needs [\d.]+ MiB to rasterise; "
                                            r"the smallest budget that renders it is") as e:
        render_out_of_core(store, wide, max_memory=streams, chunk_size=256)
    enough = _smallest(str(e.value))
    out = render_out_of_core(store, wide, max_memory=enough, chunk_size=256)
    _assert_same_render(out, render(g, wide, backend="cpu"))
    assert out.visible[0] > 0.9 * len(store) and out.peak_bytes <= enough


def test_streamed_render_holds_no_more_than_its_budget(scene_ply):
    """Every array numpy allocates (the chunk windows' copies, projections, records, the rasteriser's buffers,
    traced by tracemalloc) stays within the budget, which is a third of the file."""
    store = MappedGaussians(scene_ply)
    cams = make_cameras(2, HEIGHT, WIDTH, dtype=torch.float32)
    budget = scene_ply.stat().st_size // 3
    render_out_of_core(store, cams, max_memory=budget, chunk_size=300)  # compile and warm up outside the trace
    tracemalloc.start()
    try:
        out = render_out_of_core(store, cams, max_memory=budget, chunk_size=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.peak_bytes <= budget and peak <= budget, (out.peak_bytes, peak, budget)
    # the whole file through the in-memory path takes several times that
    tracemalloc.start()
    try:
        render(read_ply(scene_ply), cams, backend="cpu")
        _, whole = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whole > 2 * budget, (whole, budget)


def test_bounds_of_a_streamed_splat(scene_ply):
    store = MappedGaussians(scene_ply)
    g = read_ply(scene_ply)
    # a sample as large as the file is the file: the same orbit as in memory
    torch.testing.assert_close(splat_orbit(store.sample(10**6), 4).c2w, splat_orbit(g, 4).c2w, atol=0, rtol=0)
    sample = store.sample(2000)
    assert len(sample) == 2000 and torch.equal(sample.means[1], g.means[6])  # every 6th of 12000
    torch.testing.assert_close(splat_orbit(sample, 4).c2w, splat_orbit(g, 4).c2w, atol=0.1, rtol=0.05)


def test_files_that_cannot_be_read_in_place(tmp_path):
    g = _scene(100, degree=0)
    columns = {n: np.zeros(100, dtype=np.float32) for n in property_names(0)}
    text = tmp_path / "text.ply"
    PlyData([PlyElement.describe(np.zeros(100, dtype=[(n, "<f4") for n in columns]), "vertex")],
            text=True).write(str(text))
    with pytest.raises(ManyviewError, match="text.ply: format ascii"):
        MappedGaussians(text)
    big = tmp_path / "big.ply"
    PlyData([PlyElement.describe(np.zeros(100, dtype=[(n, ">f4") for n in columns]), "vertex")],
            byte_order=">").write(str(big))
    with pytest.raises(ManyviewError, match="big.ply: format binary_big_endian; reading a PLY in place needs "
                                            "binary_little_endian"):
        MappedGaussians(big)
    double = tmp_path / "double.ply"
    PlyData([PlyElement.describe(np.zeros(100, dtype=[(n, "<f8") for n in columns]), "vertex")],
            byte_order="<").write(str(double))
    with pytest.raises(ManyviewError, match="vertex property x is double"):
        MappedGaussians(double)
    good = tmp_path / "good.ply"
    write_ply(good, g)
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ManyviewError, match="truncated: the header announces 100 vertices"):
        MappedGaussians(truncated)
    missing = tmp_path / "missing.ply"
    PlyData([PlyElement.describe(np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")]), "vertex")],
            byte_order="<").write(str(missing))
    with pytest.raises(ManyviewError, match="missing properties f_dc_0"):
        MappedGaussians(missing)
    nan = tmp_path / "nan.ply"
    write_ply(nan, g.replace(log_scales=g.log_scales.index_put((torch.tensor([57]),), torch.tensor(float("nan")))))
    with pytest.raises(ManyviewError, match=r"property scale_0 has NaN or infinite values \(first at vertex 57\)"):
        render_out_of_core(MappedGaussians(nan), make_cameras(1, 16, 16, dtype=torch.float32), chunk_size=32)


def test_cli_render_streams_when_given_a_budget_and_draws_the_same_frames(scene_ply, tmp_path):
    import json

    from PIL import Image

    from manyview.io.transforms_json import write_transforms_json

    cams = make_cameras(3, HEIGHT, WIDTH, dtype=torch.float32)
    write_transforms_json(tmp_path / "cams" / "transforms.json", cams, [f"{i:05d}.png" for i in range(3)])
    for cameras in (["--orbit", "3", "--width", "40", "--up", "0", "-1", "0"], ["--cameras", str(tmp_path / "cams")]):
        name = cameras[0].strip("-")
        for mode, extra in (("memory", []), ("streamed", ["--max-memory", "0.01"])):
            assert main(["render", str(scene_ply), *cameras, "--out", str(tmp_path / name / mode), *extra]) == 0
        frames = lambda mode: [np.asarray(Image.open(p)) for p in sorted((tmp_path / name / mode).glob("*.png"))]
        assert len(frames("streamed")) == 3
        for a, b in zip(frames("memory"), frames("streamed")):  # 8-bit images of renders equal within 1e-5
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
            assert a.std() > 5  # the frames show the scene
        record = lambda mode: json.loads((tmp_path / name / mode / "render.json").read_text())
        assert record("streamed")["out_of_core"] == {"max_memory_bytes": int(0.01 * (1 << 30))}
        assert record("memory")["out_of_core"] is None
    assert Image.open(tmp_path / "cameras" / "streamed" / "00000.png").size == (WIDTH, HEIGHT)


def test_cli_render_streams_by_itself_a_file_beyond_the_default_budget(scene_ply, tmp_path, monkeypatch, capsys):
    import json

    import manyview.splat.out_of_core as ooc

    file_bytes = scene_ply.stat().st_size
    monkeypatch.setattr(ooc, "default_max_memory", lambda: 3 * file_bytes)  # a machine with too little for 4x
    assert main(["render", str(scene_ply), "--orbit", "2", "--width", "24", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "render.json").read_text())["out_of_core"] == {
        "max_memory_bytes": 3 * file_bytes}
    # a file that can neither be streamed nor read within the budget: one line saying both
    text = tmp_path / "text.ply"
    PlyData([PlyElement.describe(np.zeros(3000, dtype=[(n, "<f4") for n in property_names(0)]), "vertex")],
            text=True).write(str(text))
    monkeypatch.setattr(ooc, "default_max_memory", lambda: text.stat().st_size)
    capsys.readouterr()
    assert main(["render", str(text), "--orbit", "2", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text.ply: format ascii" in err and "more than the" in err, err
    assert not (tmp_path / "t").exists()
    # with a budget given: why it cannot be streamed
    assert main(["render", str(text), "--orbit", "2", "--out", str(tmp_path / "t"), "--max-memory", "1"]) == 2
    assert "format ascii; reading a PLY in place needs binary_little_endian" in capsys.readouterr().err
    # a budget below one chunk, from the command line: one line naming the smallest that works
    assert main(["render", str(scene_ply), "--orbit", "2", "--out", str(tmp_path / "s"), "--max-memory",
                 "0.001"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r"smallest budget that can stream it is [\d.]+ MiB "
                                                     r"\(--max-memory 0\.\d\d\)", err), err
    assert not (tmp_path / "s").exists()
