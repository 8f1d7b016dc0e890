"""RealEstate10K chunks, evaluation index and LVSM scene JSON."""

from __future__ import annotations

import json

import pytest
import torch

from manyview.errors import ManyviewError
from manyview.io.images import ImageLoadPolicy
from manyview.io.realestate10k import (RE10KScene, cameras_to_rows, iter_scenes, load_scene, read_chunk,
                                       read_evaluation_index, read_index, read_lvsm_scene, rows_to_cameras,
                                       scene_from_views, write_chunk, write_chunks, write_lvsm_scene)
from manyview.scene import Cameras, Views


def _views(n: int, seed: int, hw=(36, 64)) -> Views:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64)
    cams = Cameras.look_at(eye, eye + torch.tensor([0.0, 0.0, 1.0]).double(), torch.tensor([0.0, -1.0, 0.0]).double(),
                           torch.tensor([50.0, 48.0, 32.5, 17.0]).double(), torch.tensor(hw))
    # smooth images so JPEG round trips are close
    yy, xx = torch.meshgrid(torch.linspace(0, 1, hw[0]), torch.linspace(0, 1, hw[1]), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)])
    images = torch.stack([base * 0.6 + 0.1 + 0.05 * i for i in range(n)])
    return Views(images=images, cameras=cams.to(torch.float32))


def test_rows_cameras_round_trip():
    cams = _views(5, 0).cameras
    rows = cameras_to_rows(cams)
    assert rows.shape == (5, 18) and rows.dtype == torch.float32
    assert torch.equal(rows[:, 4:6], torch.zeros(5, 2))
    torch.testing.assert_close(rows[:, 0], cams.fx / 64)  # fx normalised by width
    torch.testing.assert_close(rows[:, 3], cams.cy / 36)  # cy normalised by height
    torch.testing.assert_close(rows[:, 6:].reshape(5, 3, 4), cams.w2c[:, :3, :], atol=1e-6, rtol=0)
    back = rows_to_cameras(rows, (36, 64))
    torch.testing.assert_close(back.c2w.float(), cams.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.fxfycxcy.float(), cams.fxfycxcy, atol=1e-4, rtol=0)


def test_chunks_write_read_identical(tmp_path):
    scenes = [scene_from_views(f"scene{i}", _views(3 + i, i), url=f"https://example.com/{i}") for i in range(3)]
    root = write_chunks(tmp_path / "test", scenes, scenes_per_chunk=2)
    assert sorted(p.name for p in root.iterdir()) == ["000000.torch", "000001.torch", "index.json"]
    assert read_index(root) == {"scene0": "000000.torch", "scene1": "000000.torch", "scene2": "000001.torch"}
    loaded = list(iter_scenes(root))
    assert [s.key for s in loaded] == ["scene0", "scene1", "scene2"]
    for a, b in zip(scenes, loaded):
        assert a.url == b.url and torch.equal(a.cameras, b.cameras) and torch.equal(a.timestamps, b.timestamps)
        assert len(a.images) == len(b.images) and all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert [s.key for s in iter_scenes(root, ["scene2"])] == ["scene2"]
    assert load_scene(root, "scene1").key == "scene1"
    with pytest.raises(ManyviewError, match="'nope' is not in index.json"):
        load_scene(root, "nope")


def test_scene_views_decode_and_cameras(tmp_path):
    original = _views(4, 7)
    scene = scene_from_views("s", original)
    path = write_chunk(tmp_path / "c.torch", [scene])
    (loaded,) = read_chunk(path)
    views = loaded.views()
    assert views.names == [f"s/{i:05d}" for i in range(4)]
    assert (views.images - original.images).abs().mean() < 0.01  # JPEG quality 95
    torch.testing.assert_close(views.cameras.c2w, original.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cameras.fxfycxcy, original.cameras.fxfycxcy, atol=1e-4, rtol=0)

    sub = loaded.views([3, 1], ImageLoadPolicy(size=(32, 32)))  # pixelSplat-style: short side, centre crop
    assert sub.images.shape == (2, 3, 32, 32) and sub.names == ["s/00003", "s/00001"]
    rw = round(64 * 32 / 36)  # 57: the short side fits, the width follows (per-axis scale kept exact)
    scale = torch.tensor([rw / 64, 32 / 36, rw / 64, 32 / 36])
    expected = original.cameras.fxfycxcy[3] * scale - torch.tensor([0, 0, (rw - 32) // 2, 0])
    torch.testing.assert_close(sub.cameras.fxfycxcy[0], expected, atol=1e-4, rtol=0)
    with pytest.raises(ManyviewError, match="out of range"):
        loaded.views([9])


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_unsafe_and_corrupt_chunks_are_refused(tmp_path):
    evil = tmp_path / "evil.torch"
    torch.save([{"key": "x", "cameras": torch.zeros(1, 18), "images": [torch.zeros(3, dtype=torch.uint8)],
                 "payload": _Evil()}], evil)
    with pytest.raises(ManyviewError, match="weights_only") as e:
        read_chunk(evil)
    assert str(evil) in str(e.value)
    junk = tmp_path / "junk.torch"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(ManyviewError, match="cannot load chunk"):
        read_chunk(junk)
    torch.save([{"key": "x", "cameras": torch.zeros(2, 17), "images": []}], tmp_path / "bad.torch")
    with pytest.raises(ManyviewError, match=r"\(N, 18\)"):
        read_chunk(tmp_path / "bad.torch")
    torch.save([{"cameras": torch.zeros(1, 18), "images": []}], tmp_path / "nokey.torch")
    with pytest.raises(ManyviewError, match="missing key 'key'"):
        read_chunk(tmp_path / "nokey.torch")
    scene = RE10KScene("k", torch.zeros(1, 18), [torch.tensor([1, 2, 3], dtype=torch.uint8)], torch.zeros(1))
    with pytest.raises(ManyviewError, match="not a readable image"):
        scene.views()


def test_evaluation_index(tmp_path):
    path = tmp_path / "evaluation_index_re10k.json"
    path.write_text(json.dumps({"a": {"context": [10, 60], "target": [20, 30, 40]}, "b": None}))
    index = read_evaluation_index(path)
    assert index["b"] is None and index["a"].context == [10, 60] and index["a"].target == [20, 30, 40]
    path.write_text(json.dumps({"a": {"context": [10, 60]}}))
    with pytest.raises(ManyviewError, match="'a'.*'target'"):
        read_evaluation_index(path)


def test_lvsm_scene_json_round_trip(tmp_path):
    original = _views(3, 3)
    json_path = write_lvsm_scene(tmp_path / "lvsm", "abc", original)
    assert json_path == tmp_path / "lvsm" / "metadata" / "abc.json"
    frame = json.loads(json_path.read_text())["frames"][0]
    assert frame["image_path"] == "images/abc/00000.png" and len(frame["fxfycxcy"]) == 4
    views = read_lvsm_scene(json_path)
    assert (views.images - original.images).abs().max() <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(views.cameras.c2w, original.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cameras.fxfycxcy, original.cameras.fxfycxcy)
    data = json.loads(json_path.read_text())
    del data["frames"][1]["w2c"]
    json_path.write_text(json.dumps(data))
    with pytest.raises(ManyviewError, match="frame 1: missing key 'w2c'"):
        read_lvsm_scene(json_path)


def test_chunk_writer_is_atomic_and_careful(tmp_path, monkeypatch):
    scenes = [scene_from_views("a", _views(2, 0))]
    root = write_chunks(tmp_path / "split", scenes)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        write_chunks(root, scenes + [scene_from_views("b", _views(2, 1))])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(ManyviewError, match="refusing"):
        write_chunks(tmp_path / "photos", scenes)
    assert (tmp_path / "photos" / "keep.jpg").exists()
