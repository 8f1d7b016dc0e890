"""COLMAP models: round trips through pycolmap itself, distortion handling, dataset folders, bad models."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from manyview.errors import ManyviewError
from manyview.io.colmap import find_colmap_model, read_colmap, read_colmap_dataset, write_colmap
from manyview.io.images import ImageLoadPolicy
from manyview.scene import Cameras, PointCloud


def _cameras(n: int, seed: int = 0, shared: bool = False, size=(48, 64)) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64) * 4
    target = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3
    f = torch.tensor([70.0, 72.0, 31.5, 23.0], dtype=torch.float64).repeat(n, 1)
    if not shared:
        f = f + torch.rand(n, 4, generator=g, dtype=torch.float64) * 5
    return Cameras.look_at(eye, target, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), f, torch.tensor(size))


def _points(n: int = 50, seed: int = 1) -> PointCloud:
    g = torch.Generator().manual_seed(seed)
    return PointCloud(torch.randn(n, 3, generator=g, dtype=torch.float64),
                      torch.randint(0, 256, (n, 3), generator=g).float() / 255)


def _pose(image) -> np.ndarray:
    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw
    return np.vstack([cfw.matrix(), [0, 0, 0, 1]])


@pytest.mark.parametrize("text", [False, True])
def test_round_trip_through_pycolmap(tmp_path, text):
    cams, pts = _cameras(5), _points()
    names = [f"img_{i}.png" for i in range(5)]
    out = write_colmap(tmp_path / "model", cams, names, pts, text=text)
    ext = ".txt" if text else ".bin"
    assert {p.name for p in out.iterdir()} >= {f"cameras{ext}", f"images{ext}", f"points3D{ext}"}

    rec = pycolmap.Reconstruction(str(out))  # pycolmap itself, not our reader
    assert rec.num_images() == 5 and rec.num_cameras() == 5 and rec.num_points3D() == 50
    by_name = {im.name: im for im in rec.images.values()}
    for i, name in enumerate(names):
        im = by_name[name]
        np.testing.assert_allclose(_pose(im), cams.w2c[i].numpy(), atol=1e-5)
        cam = rec.cameras[im.camera_id]
        assert cam.model.name == "PINHOLE" and (cam.height, cam.width) == (48, 64)
        np.testing.assert_allclose(cam.params, cams.fxfycxcy[i].numpy(), atol=1e-5)
    xyz = np.array([p.xyz for _, p in sorted(rec.points3D.items())])
    rgb = np.array([p.color for _, p in sorted(rec.points3D.items())])
    np.testing.assert_allclose(xyz, pts.xyz.numpy(), atol=1e-9)
    np.testing.assert_array_equal(rgb, np.round(pts.rgb.numpy() * 255))

    model = read_colmap(out, dtype=torch.float64)
    assert model.names == names and model.distorted == {}
    torch.testing.assert_close(model.cameras.c2w, cams.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.cameras.fxfycxcy, cams.fxfycxcy, atol=1e-5, rtol=0)
    assert torch.equal(model.cameras.image_size, cams.image_size)
    torch.testing.assert_close(model.points.xyz, pts.xyz, atol=1e-9, rtol=0)
    torch.testing.assert_close(model.points.rgb, pts.rgb, atol=1e-6, rtol=0)
    assert read_colmap(out).cameras.dtype == torch.float32


def test_shared_camera(tmp_path):
    cams = _cameras(4, shared=True)
    names = [f"{i}.jpg" for i in range(4)]
    assert pycolmap.Reconstruction(str(write_colmap(tmp_path / "a", cams, names))).num_cameras() == 1
    separate = write_colmap(tmp_path / "b", cams, names, shared_camera=False)
    assert pycolmap.Reconstruction(str(separate)).num_cameras() == 4
    with pytest.raises(ManyviewError, match="differ"):
        write_colmap(tmp_path / "c", _cameras(4), names, shared_camera=True)


def test_names_with_spaces_and_non_ascii(tmp_path):
    cams = _cameras(2)
    names = ["my photo é.jpg", "sub dir/ü 2.jpg"]
    model = read_colmap(write_colmap(tmp_path / "m", cams, names))
    assert model.names == names
    with pytest.raises(ManyviewError, match="white space"):
        write_colmap(tmp_path / "t", cams, names, text=True)
    assert not (tmp_path / "t").exists()


def _model_with(tmp_path: Path, model_name: str, params: list[float]) -> Path:
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model=model_name, width=64, height=48, params=params, camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([0.1, 0.2, 0.3])))
    out = tmp_path / model_name
    out.mkdir()
    rec.write_binary(str(out))
    return out


def test_distortion_is_dropped_and_recorded(tmp_path):
    with pytest.warns(UserWarning, match="distortion"):
        m = read_colmap(_model_with(tmp_path, "SIMPLE_RADIAL", [80.0, 32.0, 24.0, 0.05]))
    torch.testing.assert_close(m.cameras.fxfycxcy[0], torch.tensor([80.0, 80.0, 32.0, 24.0]))
    assert m.distorted == {"a.png": "SIMPLE_RADIAL"}
    torch.testing.assert_close(m.cameras.centers[0], torch.tensor([-0.1, -0.2, -0.3]))
    with pytest.warns(UserWarning, match="distortion"):
        m = read_colmap(_model_with(tmp_path, "OPENCV", [80.0, 81.0, 32.0, 24.0, 0.1, 0.01, 0.0, 0.0]))
    torch.testing.assert_close(m.cameras.fxfycxcy[0], torch.tensor([80.0, 81.0, 32.0, 24.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero distortion: nothing to warn about
        m = read_colmap(_model_with(tmp_path, "RADIAL", [80.0, 32.0, 24.0, 0.0, 0.0]))
    assert m.distorted == {}
    with pytest.raises(ManyviewError, match="not a perspective camera"):
        read_colmap(_model_with(tmp_path, "OPENCV_FISHEYE", [80.0, 81.0, 32.0, 24.0, 0.1, 0.0, 0.0, 0.0]))


def _dataset(tmp_path: Path, cams: Cameras, image_hw=(48, 64)) -> Path:
    root = tmp_path / "scene dir é"
    names = [f"frame_{i}.png" for i in range(len(cams))]
    write_colmap(root / "sparse" / "0", cams, names, _points())
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full(image_hw + (3,), 40 * i, np.uint8)).save(root / "images" / name)
    return root


def test_dataset_folder_loads_views_with_cameras(tmp_path):
    cams = _cameras(3)
    root = _dataset(tmp_path, cams)
    assert find_colmap_model(root) == root / "sparse" / "0"
    views, model = read_colmap_dataset(root)
    assert views.images.shape == (3, 3, 48, 64) and views.names == model.names
    torch.testing.assert_close(views.cameras.c2w, cams.c2w.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cameras.fxfycxcy, cams.fxfycxcy.float())
    np.testing.assert_allclose(views.images[2, :, 0, 0].numpy(), [80 / 255] * 3, atol=1e-6)

    small, _ = read_colmap_dataset(root, ImageLoadPolicy(size=(24, 24)))
    f = cams.fxfycxcy.float()
    expected = torch.stack([f[:, 0] / 2, f[:, 1] / 2, f[:, 2] / 2 - 4, f[:, 3] / 2], -1)  # 24x32, centre crop 24
    torch.testing.assert_close(small.cameras.fxfycxcy, expected)


def test_downsampled_images_rescale_the_cameras(tmp_path):
    cams = _cameras(2)
    root = _dataset(tmp_path, cams, image_hw=(24, 32))  # model at 48x64, files at half size
    views, _ = read_colmap_dataset(root)
    torch.testing.assert_close(views.cameras.fxfycxcy, cams.fxfycxcy.float() / 2)


def test_missing_image_is_named(tmp_path):
    root = _dataset(tmp_path, _cameras(3))
    (root / "images" / "frame_1.png").unlink()
    with pytest.raises(ManyviewError, match="frame_1.png") as e:
        read_colmap_dataset(root)
    assert "missing" in str(e.value)


def test_bad_models_give_one_clear_error(tmp_path):
    with pytest.raises(ManyviewError, match="not found"):
        read_colmap(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManyviewError, match="no COLMAP model"):
        read_colmap(tmp_path / "empty")
    with pytest.raises(ManyviewError, match="no COLMAP model found"):
        read_colmap_dataset(tmp_path / "empty")

    # pycolmap trusts the counts in binary files (a 3-byte images.bin makes it loop forever): we check first.
    good = write_colmap(tmp_path / "good", _cameras(3), ["a", "b", "c"], _points())
    for name in ("images.bin", "cameras.bin", "points3D.bin"):
        data = (good / name).read_bytes()
        for cut in (3, 20, len(data) - 1):
            bad = tmp_path / f"{name}{cut}"
            shutil.copytree(good, bad)
            (bad / name).write_bytes(data[:cut])
            with pytest.raises(ManyviewError, match=f"{name} is truncated or corrupt") as e:
                read_colmap(bad)
            assert str(bad / name) in str(e.value)
    bad = tmp_path / "badmodel"
    shutil.copytree(good, bad)
    data = bytearray((good / "cameras.bin").read_bytes())
    data[12:16] = (99).to_bytes(4, "little")  # first camera's model id: no such model
    (bad / "cameras.bin").write_bytes(bytes(data))
    with pytest.raises(ManyviewError, match="cameras.bin is truncated or corrupt"):
        read_colmap(bad)

    text = tmp_path / "text"
    text.mkdir()
    (text / "cameras.txt").write_text("1 PINHOLE sixty-four 48 1 1 1 1\n")
    (text / "images.txt").write_text("")
    (text / "points3D.txt").write_text("")
    with pytest.raises(ManyviewError, match="cannot read COLMAP model"):
        read_colmap(text)


def test_legacy_model_without_rigs_and_frames(tmp_path):
    full = write_colmap(tmp_path / "full", _cameras(2), ["a.png", "b.png"], text=True)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        shutil.copy(full / name, legacy / name)
    torch.testing.assert_close(read_colmap(legacy).cameras.c2w, read_colmap(full).cameras.c2w)


def test_writer_never_replaces_a_folder_with_other_files(tmp_path):
    root = _dataset(tmp_path, _cameras(2))
    with pytest.raises(ManyviewError, match="refusing"):
        write_colmap(root, _cameras(2), ["x", "y"])
    assert (root / "images" / "frame_0.png").is_file()
    write_colmap(root / "sparse" / "0", _cameras(2, seed=5), ["x", "y"])  # replacing a model is fine
    assert read_colmap(root / "sparse" / "0").names == ["x", "y"]


def test_interrupted_write_keeps_the_old_model(tmp_path, monkeypatch):
    out = write_colmap(tmp_path / "m", _cameras(2), ["a", "b"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(self, path):
        (Path(path) / "cameras.bin").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pycolmap.Reconstruction, "write_binary", broken)
    with pytest.raises(ManyviewError, match="disk full"):
        write_colmap(out, _cameras(3), ["a", "b", "c"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_fast_points_reader_matches_pycolmap_with_tracks(tmp_path):
    """read_points_bin (one numpy gather over variable-length records) == iterating pycolmap's points."""
    from manyview.io.colmap import _points_pycolmap, read_points_bin

    rng = np.random.default_rng(0)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=64, height=48,
                                                    params=[50.0, 50.0, 32.0, 24.0], camera_id=1))
    for image_id in (1, 2):
        image = pycolmap.Image(name=f"{image_id}.png", keypoints=rng.random((40, 2)) * 40, camera_id=1,
                               image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    for k in range(30):
        track = pycolmap.Track()
        for image_id in (1, 2)[: k % 3]:  # track lengths 0, 1, 2
            track.add_element(image_id, k)
        rec.add_point3D(rng.normal(size=3), track, rng.integers(0, 256, 3).astype(np.uint8))
    out = tmp_path / "tracks"
    out.mkdir()
    rec.write_binary(str(out))
    fast = read_points_bin(out / "points3D.bin")
    ref = _points_pycolmap(pycolmap.Reconstruction(str(out)))
    for a, b in zip(fast, ref):
        np.testing.assert_array_equal(a, b)
    assert len(fast[0]) == 30
    torch.testing.assert_close(read_colmap(out, dtype=torch.float64).points.xyz, torch.from_numpy(ref[1]))
