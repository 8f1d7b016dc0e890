"""Image reading and writing: formats, orientation, sizes, bad files, atomic writes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from manyview.errors import ManyviewError
from manyview.geometry.projection import project
from manyview.io import image_decode
from manyview.io.image_writers import encode_jpeg, write_image
from manyview.io.images import ImageLoadPolicy, list_images, load_image_bytes, load_images, natural_key, read_image
from manyview.io.pixel_maps import read_depth, read_mask, write_depth, write_mask
from manyview.scene import Cameras
from manyview.scene.resize import ImageTransform, apply_to_cameras

FAMILY = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "family"


def _save_with_orientation(path: Path, arr: np.ndarray, orientation: int, **kwargs):
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), **kwargs)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    """The fast path (resample stored pixels, transpose last) equals PIL's exif_transpose followed by resizing."""
    rng = np.random.default_rng(orientation)
    base = (rng.random((30, 47, 3)) * 255).astype(np.uint8)
    path = tmp_path / f"o{orientation}.png"
    _save_with_orientation(path, base, orientation)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")

    x, t = read_image(path)
    assert t.original_size == (upright.size[1], upright.size[0])
    np.testing.assert_array_equal(np.round(_hwc(x) * 255).astype(np.uint8), np.asarray(upright))

    y, t2 = read_image(path, ImageLoadPolicy(size=(16, 16)))
    (rh, rw), (top, left, h, w) = t2.resized_size, t2.crop
    sx, sy = rw / upright.size[0], rh / upright.size[1]
    ref = upright.resize((w, h), Image.Resampling.LANCZOS, box=(left / sx, top / sy, (left + w) / sx, (top + h) / sy))
    assert np.abs(_hwc(y) - np.asarray(ref, dtype=np.float32) / 255).max() <= 1.5 / 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_box_maps_to_the_same_stored_pixels(orientation):
    """Cropping the upright image == cropping the stored image at the mapped box, then transposing."""
    stored = Image.fromarray(np.arange(7 * 11, dtype=np.int32).reshape(7, 11), "I")
    op = image_decode._ORIENT_OP.get(orientation)
    upright = stored.transpose(op) if op is not None else stored
    W, H = upright.size
    box = (1, 2, W - 3, H - 1)  # deliberately off-centre
    stored_box = tuple(int(v) for v in image_decode._box_to_stored(box, orientation, (H, W)))
    got = stored.crop(stored_box)
    got = got.transpose(op) if op is not None else got
    np.testing.assert_array_equal(np.asarray(got), np.asarray(upright.crop(box)))


def test_exif_rotated_jpeg_orientation_6(tmp_path):
    """Orientation 6 = rotate 90 degrees clockwise for display: dims swap, the stored top edge becomes the right."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # left half red
    stored[:, 30:] = (0, 0, 255)  # right half blue
    stored[:10] = (0, 255, 0)  # top band green
    path = tmp_path / "rot6.jpg"
    _save_with_orientation(path, stored, 6, quality=95)
    x, t = read_image(path)
    assert x.shape == (3, 60, 40) and t.original_size == (60, 40)
    img = _hwc(x)
    np.testing.assert_allclose(img[5:25, 5:25].mean((0, 1)), [1, 0, 0], atol=0.08)  # stored left -> top
    np.testing.assert_allclose(img[35:55, 5:25].mean((0, 1)), [0, 0, 1], atol=0.08)  # stored right -> bottom
    np.testing.assert_allclose(img[5:55, 33:38].mean((0, 1)), [0, 1, 0], atol=0.08)  # stored top -> right
    unrotated, _ = read_image(path, ImageLoadPolicy(exif_orientation=False))
    assert unrotated.shape == (3, 40, 60)


# ------------------------------------------------------------------------------------------ modes
def test_grayscale_palette_rgba_and_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    x, _ = read_image(tmp_path / "gray.png")
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), gray / 255.0, atol=1e-6)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # fully transparent
    rgba[0, 1] = (200, 100, 50, 255)  # opaque
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    white, _ = read_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(white[:, 0, 0].numpy(), [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(white[:, 0, 1].numpy(), np.array([200, 100, 50]) / 255, atol=1e-6)
    np.testing.assert_allclose(white[:, 1, 0].numpy(), [127 / 255] * 3, atol=1.5 / 255)
    dropped, _ = read_image(tmp_path / "rgba.png", ImageLoadPolicy(alpha="drop"))
    np.testing.assert_allclose(dropped[:, 0, 0].numpy(), np.array([200, 100, 50]) / 255, atol=1e-6)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    p, _ = read_image(tmp_path / "pal.png")
    np.testing.assert_allclose(p[:, 0, 0].numpy(), [1, 1, 1])  # transparent index -> white
    np.testing.assert_allclose(p[:, 0, 1].numpy(), [0, 1, 0])

    g16 = np.array([[0, 1000], [30000, 65535]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    y, _ = read_image(tmp_path / "g16.png")
    np.testing.assert_allclose(y[0].numpy(), g16 / 65535.0, atol=1e-6)  # 1000/65535 is not an 8-bit level

    import cv2

    c16 = np.zeros((2, 3, 3), np.uint16)
    c16[..., 0], c16[..., 1], c16[..., 2] = 1000, 40000, 65535  # R, G, B
    folder = tmp_path / "dir ü"
    folder.mkdir()
    ok, buf = cv2.imencode(".png", c16[..., ::-1])  # OpenCV stores BGR
    assert ok
    (folder / "c16 é.png").write_bytes(buf.tobytes())
    z, _ = read_image(folder / "c16 é.png")
    np.testing.assert_allclose(z[:, 0, 0].numpy(), np.array([1000, 40000, 65535]) / 65535.0, atol=1e-6)


def test_webp_and_jpeg_read(tmp_path):
    arr = np.full((8, 10, 3), (10, 200, 30), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(arr).save(tmp_path / "b.JPG", quality=98)
    views, _ = load_images(tmp_path)
    assert views.names == ["a.webp", "b.JPG"]
    np.testing.assert_allclose(views.images[0, :, 0, 0].numpy(), np.array([10, 200, 30]) / 255, atol=1e-6)
    np.testing.assert_allclose(views.images[1, :, 4, 4].numpy(), np.array([10, 200, 30]) / 255, atol=0.03)


# ------------------------------------------------------------------------------------------ folders and sizes
def test_folder_natural_sort_ignores_other_files_and_handles_odd_paths(tmp_path):
    folder = tmp_path / "my photos" / "été ü"
    folder.mkdir(parents=True)
    for name, value in (("img 10.png", 10), ("img 2.png", 2), ("img1.png", 1)):
        Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "sub.png").mkdir()
    assert [p.name for p in list_images(folder)] == ["img1.png", "img 2.png", "img 10.png"]
    views, _ = load_images(folder)
    assert views.names == ["img1.png", "img 2.png", "img 10.png"]
    assert views.images[:, 0, 0, 0].mul(255).round().tolist() == [1, 2, 10]
    assert natural_key("a2.png") < natural_key("a10.png")


def test_mixed_sizes_common_size_and_patch_multiple(tmp_path):
    for name, (h, w) in (("0.png", (48, 64)), ("1.png", (60, 60)), ("2.png", (30, 90))):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / name)
    views, transforms = load_images(tmp_path, ImageLoadPolicy(long_side=40, patch_multiple=16))
    assert views.images.shape == (3, 3, 16, 32)  # 30 x 40 -> multiples of 16
    for t in transforms:
        rh, rw = t.resized_size
        top, left, h, w = t.crop
        assert (h, w) == (16, 32) and rh >= h and rw >= w and top + h <= rh and left + w <= rw
        assert abs(rh / rw - t.original_size[0] / t.original_size[1]) < 0.1  # aspect kept
    stretched, ts = load_images(tmp_path, ImageLoadPolicy(size=(32, 32), crop="none"))
    assert stretched.images.shape == (3, 3, 32, 32) and all(t.crop == (0, 0, 32, 32) for t in ts)


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("size", [(48, 48), (16, 48)])  # crops the sides, then the top and bottom
def test_transformed_cameras_project_onto_the_loaded_pixels(tmp_path, orientation, size):
    """A dot drawn where a 3D point projects stays under that point's projection after resize, crop, rotation."""
    H, W = 90, 160
    cam = Cameras(torch.tensor([[120.0, 110.0, 83.0, 41.0]], dtype=torch.float64),
                  torch.eye(4, dtype=torch.float64)[None], torch.tensor([[H, W]]))
    X = torch.tensor([[[0.4, 0.25, 2.0]]], dtype=torch.float64)
    u, v = project(X, cam.fxfycxcy, cam.w2c)[0][0, 0]
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    dot = np.exp(-((xx - float(u)) ** 2 + (yy - float(v)) ** 2) / (2 * 3.0 ** 2))
    upright = np.round(np.repeat(dot[..., None], 3, -1) * 255).astype(np.uint8)
    stored = upright if orientation == 1 else np.rot90(upright, k=1).copy()  # display rotates it back clockwise
    path = tmp_path / "dot.png"
    _save_with_orientation(path, stored, orientation)

    views, transforms = load_images([path], ImageLoadPolicy(size=size))
    assert transforms[0].original_size == (H, W) and views.images.shape[-2:] == size
    new = apply_to_cameras(cam, transforms)
    u2, v2 = project(X, new.fxfycxcy, new.w2c)[0][0, 0]
    img = views.images[0, 0].double().numpy()
    h, w = img.shape
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    wgt = img ** 2
    assert abs((wgt * gx).sum() / wgt.sum() - float(u2)) < 0.35
    assert abs((wgt * gy).sum() / wgt.sum() - float(v2)) < 0.35


def test_draft_decode_matches_full_decode():
    if not FAMILY.is_dir():
        pytest.skip(f"shared data missing: {FAMILY}")
    files = sorted(FAMILY.glob("*.jpg"))[:3]
    fast, t_fast = load_images(files, ImageLoadPolicy(long_side=200, patch_multiple=8))
    ref, t_ref = load_images(files, ImageLoadPolicy(long_side=200, patch_multiple=8, draft=False))
    assert t_fast == t_ref and fast.images.shape == ref.images.shape
    assert (fast.images - ref.images).abs().mean() < 0.02


def test_apply_map_follows_the_image(tmp_path):
    t = ImageTransform("x", (4, 6), (8, 12), (2, 3, 4, 6))
    depth = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    out = t.apply_map(depth)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, depth.repeat_interleave(2, 0).repeat_interleave(2, 1)[2:6, 3:9])
    down = ImageTransform("x", (8, 8), (4, 4), (0, 0, 4, 4)).apply_map(torch.arange(64.0).reshape(8, 8))
    torch.testing.assert_close(down, torch.arange(64.0).reshape(8, 8)[1::2, 1::2])  # centres, not corners
    mask = depth > 10
    assert t.apply_map(mask).dtype == torch.bool
    torch.testing.assert_close(t.apply_map(mask), out > 10)


def test_in_memory_bytes(tmp_path):
    img = torch.rand(3, 16, 24)
    views, ts = load_image_bytes([encode_jpeg(img)], ImageLoadPolicy(size=(8, 8)))
    assert views.images.shape == (1, 3, 8, 8) and ts[0].original_size == (16, 24)
    with pytest.raises(ManyviewError, match="not a readable image"):
        load_image_bytes([b"nonsense"])


# ------------------------------------------------------------------------------------------ bad input
def _huge_png(path: Path, width: int, height: int):
    """A valid 1-bit grayscale PNG of width x height, written as a stream (a few hundred kB, no big buffers)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    rows_per_block = 500
    idat = bytearray()
    for _ in range(height // rows_per_block):
        idat += comp.compress(row * rows_per_block)
    idat += comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))


def test_bad_inputs_give_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManyviewError, match="no images") as e:
        load_images(empty)
    assert str(empty) in str(e.value)
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(ManyviewError, match="no images"):
        load_images(empty)

    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    with pytest.raises(ManyviewError, match="empty file") as e:
        load_images([zero])
    assert str(zero) in str(e.value)

    text = tmp_path / "text.png"
    text.write_text("this is not a PNG")
    with pytest.raises(ManyviewError, match="not a readable image"):
        read_image(text)

    good = tmp_path / "good.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ManyviewError, match="cannot decode") as e:
        read_image(truncated)
    assert str(truncated) in str(e.value)

    with pytest.raises(ManyviewError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_tiny_and_huge_images(tmp_path):
    Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).save(tmp_path / "one.png")
    x, t = read_image(tmp_path / "one.png")
    assert x.shape == (3, 1, 1) and t.original_size == (1, 1)
    y, _ = read_image(tmp_path / "one.png", ImageLoadPolicy(patch_multiple=16))
    assert y.shape == (3, 16, 16)
    np.testing.assert_allclose(y[:, 8, 8].numpy(), np.array([10, 20, 30]) / 255, atol=1e-6)

    huge = tmp_path / "huge.png"
    _huge_png(huge, 20000, 20000)
    assert huge.stat().st_size < 2_000_000
    with pytest.raises(ManyviewError, match="pixels") as e:
        load_images([huge])
    assert str(huge) in str(e.value)
    with pytest.raises(ManyviewError, match="refusing"):
        read_image(tmp_path / "one.png", ImageLoadPolicy(max_pixels=0))


def test_policy_validation():
    with pytest.raises(ValueError):
        ImageLoadPolicy(size=(30, 32), patch_multiple=16)
    with pytest.raises(ValueError):
        ImageLoadPolicy(crop="left")
    assert ImageLoadPolicy(long_side=512, patch_multiple=16).target_size(480, 854) == (288, 512)
    assert ImageLoadPolicy(patch_multiple=14).target_size(100, 100) == (98, 98)


# ------------------------------------------------------------------------------------------ writing
def test_write_image_depth_mask_round_trip(tmp_path):
    img = torch.rand(3, 5, 7)
    write_image(tmp_path / "a.png", img)
    back, _ = read_image(tmp_path / "a.png")
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6
    write_image(tmp_path / "a.jpg", img)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    with pytest.raises(ManyviewError, match="extension"):
        write_image(tmp_path / "a.bmpx", img)
    with pytest.raises(ManyviewError, match="shape"):
        write_image(tmp_path / "b.png", torch.rand(4, 5, 7))

    depth = torch.rand(5, 7) * 10
    write_depth(tmp_path / "d.npy", depth)
    torch.testing.assert_close(read_depth(tmp_path / "d.npy"), depth)
    write_depth(tmp_path / "d.png", depth)
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    assert (read_depth(tmp_path / "d.png") - depth).abs().max() <= 0.5e-3 + 1e-6
    with pytest.raises(ManyviewError, match="16-bit"):
        write_depth(tmp_path / "far.png", torch.full((2, 2), 70.0))
    assert not (tmp_path / "far.png").exists()

    mask = torch.rand(5, 7) > 0.5
    write_mask(tmp_path / "m.png", mask)
    assert torch.equal(read_mask(tmp_path / "m.png"), mask)


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_image(target, torch.zeros(3, 4, 4))
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, torch.ones(3, 4, 4))
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "new.png", torch.ones(3, 4, 4))
    assert target.read_bytes() == before  # the old file is intact
    assert not (tmp_path / "new.png").exists()
    assert _no_temp_files(tmp_path)


def test_module_exports_decompression_limit():
    assert image_decode.DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
