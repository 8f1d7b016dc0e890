"""Dataset folders: format detection, manyview layout round trip, describe, atomic whole-folder writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

import manyview.io.dataset as dataset_module
from manyview.errors import ManyviewError
from manyview.io.colmap import write_colmap
from manyview.io.dataset import describe, detect_format, load_dataset, load_points, read_cameras, write_dataset
from manyview.io.images import ImageLoadPolicy
from manyview.io.ply import write_ply
from manyview.io.realestate10k import scene_from_views, write_chunks
from manyview.io.transforms_json import read_transforms_json, write_transforms_json
from manyview.scene import Cameras, PointCloud, Views


def _views(n=3, h=24, w=32, seed=0) -> Views:
    g = torch.Generator().manual_seed(seed)
    cams = Cameras.look_at(torch.randn(n, 3, generator=g) * 3, torch.zeros(n, 3), torch.tensor([0.0, -1.0, 0.0]),
                           torch.tensor([40.0, 41.0, 16.0, 12.0]), torch.tensor([h, w]))
    return Views(images=torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255, cameras=cams,
                 depths=torch.rand(n, h, w, generator=g) * 5, masks=torch.rand(n, h, w, generator=g) > 0.5,
                 normals=torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1),
                 names=["a.jpg", "b/c.png", "d"][:n])


def _points() -> PointCloud:
    g = torch.Generator().manual_seed(1)
    return PointCloud(torch.randn(40, 3, generator=g), torch.randint(0, 256, (40, 3), generator=g).float() / 255)


def test_write_then_load_round_trip(tmp_path):
    views, pts = _views(), _points()
    root = write_dataset(tmp_path / "scene", views, pts)
    assert sorted(p.name for p in root.iterdir()) == ["depth", "images", "manyview.json", "masks", "normals",
                                                      "points.ply", "sparse", "transforms.json"]
    assert detect_format(root) == "manyview"
    back = load_dataset(root)
    assert back.names == views.names
    assert torch.equal(back.images, views.images)  # values k / 255 survive 8-bit PNG exactly
    torch.testing.assert_close(back.cameras.c2w, views.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.cameras.fxfycxcy, views.cameras.fxfycxcy)
    assert torch.equal(back.depths, views.depths) and torch.equal(back.masks, views.masks)
    assert torch.equal(back.normals, views.normals)
    loaded = load_points(root)
    torch.testing.assert_close(loaded.xyz, pts.xyz)
    torch.testing.assert_close(loaded.rgb, pts.rgb)

    resized = load_dataset(root, ImageLoadPolicy(size=(12, 16)))
    assert resized.images.shape == (3, 3, 12, 16) and resized.depths.shape == (3, 12, 16)
    torch.testing.assert_close(resized.cameras.fxfycxcy, views.cameras.fxfycxcy / 2)


def test_written_folder_is_a_valid_colmap_and_nerfstudio_dataset(tmp_path):
    views = _views()
    root = write_dataset(tmp_path / "scene", views, _points())
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    assert rec.num_images() == 3 and rec.num_points3D() == 40
    for im in rec.images.values():
        assert (root / "images" / im.name).is_file()
    ns = read_transforms_json(root / "transforms.json")
    torch.testing.assert_close(ns.cameras.c2w, views.cameras.c2w, atol=1e-5, rtol=0)
    assert torch.equal(ns.depths, views.depths) and torch.equal(ns.masks, views.masks)

    (root / "manyview.json").unlink()  # without the marker the folder reads as a COLMAP dataset
    assert detect_format(root) == "colmap"
    as_colmap = load_dataset(root)
    torch.testing.assert_close(as_colmap.cameras.c2w, views.cameras.c2w, atol=1e-5, rtol=0)
    assert torch.equal(as_colmap.images, views.images[[0, 1, 2]])


def test_detect_each_format(tmp_path):
    views = _views()
    colmap_root = tmp_path / "colmap"
    write_colmap(colmap_root / "sparse", views.cameras, ["0.png", "1.png", "2.png"])
    (colmap_root / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(colmap_root / "images" / f"{i}.png")
    assert detect_format(colmap_root) == "colmap" and len(load_dataset(colmap_root)) == 3

    ns_root = tmp_path / "ns"
    shutil.copytree(colmap_root / "images", ns_root / "images")
    write_transforms_json(ns_root / "transforms.json", views.cameras, [f"images/{i}.png" for i in range(3)])
    assert detect_format(ns_root) == detect_format(ns_root / "transforms.json") == "transforms_json"
    assert load_dataset(ns_root).cameras is not None

    assert detect_format(ns_root / "images") == "images"
    (ns_root / "transforms.json").unlink()
    assert detect_format(ns_root) == "images" and load_dataset(ns_root).cameras is None  # images/ subfolder
    assert detect_format(ns_root / "images" / "0.png") == "images"
    assert len(load_dataset(ns_root / "images" / "0.png")) == 1

    assert detect_format(write_ply(tmp_path / "p.ply", _points())) == "ply"
    re10k = write_chunks(tmp_path / "re10k", [scene_from_views("k", Views(views.images, views.cameras))])
    assert detect_format(re10k) == "re10k"
    with pytest.raises(ManyviewError, match="many scenes"):
        load_dataset(re10k)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ManyviewError, match="no images, COLMAP model") as e:
        load_dataset(empty)
    assert str(empty) in str(e.value)
    with pytest.raises(ManyviewError, match="no such file"):
        load_dataset(tmp_path / "missing")


def test_describe(tmp_path):
    views = _views()
    root = write_dataset(tmp_path / "scene", views, _points())
    d = describe(root)
    assert d["format"] == "manyview" and d["num_views"] == 3 and d["image_sizes"] == [[24, 32]]
    assert d["has_depth"] and d["has_masks"] and d["has_cameras"] and d["num_points"] == 40
    assert d["intrinsics"]["fx"] == [40.0, 40.0] and d["intrinsics"]["cy"] == [12.0, 12.0]
    json.dumps(d)  # plain data for `manyview info --json`
    c = describe(root / "transforms.json")
    assert c["format"] == "transforms_json" and c["has_depth"] and c["num_views"] == 3
    (root / "manyview.json").unlink()
    c = describe(root)
    assert c["format"] == "colmap" and c["num_points"] == 40 and c["image_sizes"] == [[24, 32]]
    i = describe(root / "images")
    assert i["format"] == "images" and i["num_views"] == 3 and i["intrinsics"] is None
    assert describe(root / "points.ply")["num_points"] == 40


def test_read_cameras_from_every_format_that_has_them(tmp_path):
    """The cameras alone, at the images' file sizes, by the same detection as load_dataset; no image is decoded."""
    views = _views()
    root = write_dataset(tmp_path / "scene", views)
    for source in (root, root / "transforms.json", root / "sparse" / "0"):
        cams, names = read_cameras(source)
        assert cams.dtype == torch.float64 and len(cams) == 3
        torch.testing.assert_close(cams.c2w.float(), views.cameras.c2w, atol=1e-5, rtol=0)
        torch.testing.assert_close(cams.fxfycxcy.float(), views.cameras.fxfycxcy)
        assert [n.rsplit("/", 1)[-1] for n in names] == ["a.png", "b_c.png", "d.png"]
    for image in (root / "images").iterdir():  # the cameras need no image files
        image.write_bytes(b"")
    assert len(read_cameras(root)[0]) == 3
    (root / "manyview.json").unlink()
    shutil.rmtree(root / "sparse")  # transforms.json alone
    assert detect_format(root) == "transforms_json" and len(read_cameras(root)[0]) == 3


def test_read_cameras_names_what_is_missing(tmp_path):
    with pytest.raises(ManyviewError, match="camera file or folder not found"):
        read_cameras(tmp_path / "missing")
    ply = write_ply(tmp_path / "p.ply", _points())
    with pytest.raises(ManyviewError, match="expected a transforms.json") as e:
        read_cameras(ply)
    assert str(ply) in str(e.value)
    plain = write_dataset(tmp_path / "plain", Views(images=torch.rand(2, 3, 8, 8)))
    with pytest.raises(ManyviewError, match="no cameras here"):
        read_cameras(plain)
    with pytest.raises(ManyviewError, match="no cameras here"):
        read_cameras(plain / "images")


def test_views_without_cameras(tmp_path):
    views = Views(images=torch.rand(2, 3, 8, 8))
    root = write_dataset(tmp_path / "plain", views)
    assert not (root / "sparse").exists() and not (root / "transforms.json").exists()
    back = load_dataset(root)
    assert back.cameras is None and back.names == views.names


def test_interrupted_write_leaves_nothing_or_the_old_dataset(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "scene", _views(seed=0))
    before = load_dataset(root)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_module, "write_transforms_json", broken)  # after images, depth and COLMAP
    with pytest.raises(KeyboardInterrupt):
        write_dataset(root, _views(seed=1))
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "new", _views(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no partial folder, no temp folder
    assert torch.equal(load_dataset(root).images, before.images)  # the old dataset is intact


def test_refuses_to_replace_a_folder_of_user_files(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ManyviewError, match="refusing"):
        write_dataset(photos, _views())
    assert (photos / "holiday.jpg").read_bytes() == b"precious"


def test_bad_marker(tmp_path):
    root = write_dataset(tmp_path / "scene", _views())
    (root / "manyview.json").write_text(json.dumps({"format": "manyview-dataset", "version": 1, "names": []}))
    with pytest.raises(ManyviewError, match="missing key 'names'"):
        load_dataset(root)
    (root / "manyview.json").write_text("{")
    with pytest.raises(ManyviewError, match="invalid JSON"):
        load_dataset(root)
