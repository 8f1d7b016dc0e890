"""COLMAP SfM through pycolmap: poses and focal length against a synthetic scene's exact cameras, the conventions
of what is returned (poses, intrinsics and points reproduce COLMAP's own observations), and failure reporting."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from manyview.errors import ManyviewError
from manyview.geometry.alignment import apply_sim3, umeyama
from manyview.geometry.projection import project
from manyview.io.colmap import read_colmap
from manyview.io.image_writers import write_image
from manyview.io.images import read_image
from manyview.metrics.pose import pose_metrics
from manyview.recon.sfm import SfmResult, _largest, require_registered, run_colmap_sfm
from manyview.scene import Views
from manyview.synth import generate

pycolmap = pytest.importorskip("pycolmap")

# 6 views over a 60 degree arc (12 degrees apart) of a textured object scene: at 192 px SIFT needs this overlap.
SEED, N, SIZE = 3, 6, 192


@pytest.fixture(scope="module")
def views() -> Views:
    _, views = generate(SEED, "object", N, SIZE, SIZE, arc_deg=60.0, supersample=2)
    return views


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sfm_work")


@pytest.fixture(scope="module")
def result(views, work_dir):
    return run_colmap_sfm(views, work_dir=work_dir, progress=False, seed=0)


def test_sfm_recovers_the_synthetic_object_poses(views, result):
    assert result.num_registered >= N - 1, f"SIFT registered only {result.num_registered}/{N} synthetic views"
    assert result.registration_rate == result.num_registered / N
    reg = result.registered
    metrics = pose_metrics(result.cameras[reg], views.cameras[reg])
    assert metrics["RRA@5"] >= 90.0 and metrics["RTA@5"] >= 90.0, metrics
    assert metrics["rot_err_median"] < 2.0, metrics
    assert 0.0 < result.mean_reprojection_error < 1.0
    assert result.num_models >= 1 and result.wall_time > 0
    assert set(result.timings) == {"features", "matching", "mapping"}
    assert result.names == views.names and len(result.cameras) == N
    assert (result.cameras.image_size == torch.tensor([SIZE, SIZE])).all()
    assert torch.isfinite(result.cameras.c2w[reg]).all()
    assert torch.isnan(result.cameras.c2w[~reg]).all()  # the documented marker of unregistered views


def test_sfm_focal_length_matches_ground_truth(views, result):
    f_gt = float(views.cameras.fx[0])
    f = result.cameras.fx[result.registered]
    assert torch.allclose(f, f[0].expand_as(f))  # single_camera: one shared camera
    assert abs(float(f[0]) / f_gt - 1.0) < 0.05, (float(f[0]), f_gt)
    assert torch.equal(result.cameras.fx, result.cameras.fy)  # SIMPLE_PINHOLE has one focal length
    # SIMPLE_PINHOLE keeps the principal point at the image centre, in the [0, W] x [0, H] convention
    assert torch.allclose(result.cameras.fxfycxcy[:, 2:], torch.tensor(SIZE / 2.0))


def test_sfm_returns_colmaps_observations_in_manyview_conventions(result, work_dir):
    """Projecting the model's points with the returned cameras (manyview's own projection) lands on the
    keypoints COLMAP observed, with COLMAP's own per-point errors: poses are camera-to-world, intrinsics in the
    same pixel convention, points in the cameras' frame and in the same order as their statistics."""
    rec = pycolmap.Reconstruction(str(work_dir / "sparse" / "0"))
    point_ids = list(rec.points3D.keys())  # the order of result.points
    row = {pid: k for k, pid in enumerate(point_ids)}
    xyz = result.points.xyz.double()
    assert torch.allclose(xyz, torch.tensor(np.array([rec.points3D[p].xyz for p in point_ids])), atol=1e-5)
    err_sum, count, depths = torch.zeros(len(point_ids), dtype=torch.float64), torch.zeros(len(point_ids)), []
    for i in torch.nonzero(result.registered).flatten().tolist():
        obs = [p for p in rec.find_image_with_name(f"{i:05d}.png").points2D if p.has_point3D()]
        rows = torch.tensor([row[p.point3D_id] for p in obs])
        cam = result.cameras[i].to(torch.float64)
        uv, z = project(xyz[rows], cam.fxfycxcy, cam.w2c)
        err_sum.index_add_(0, rows, (uv - torch.tensor(np.array([p.xy for p in obs]))).norm(dim=-1))
        count.index_add_(0, rows, torch.ones(len(rows)))
        depths.append(z)
    assert torch.cat(depths).min() > 0
    assert torch.equal(count.long(), result.track_lengths)
    per_point = err_sum / count
    # float32 cameras and points: agreement to a few thousandths of a pixel
    assert torch.allclose(per_point, result.point_errors.double(), atol=5e-3)
    assert float(per_point.mean()) == pytest.approx(result.mean_reprojection_error, rel=1e-3)
    assert result.track_lengths.min() >= 2 and result.point_errors.max() <= 4.0 + 1e-3  # COLMAP's filter bound
    assert 0.0 <= float(result.points.rgb.min()) and float(result.points.rgb.max()) <= 1.0


def test_sfm_work_dir_is_a_readable_colmap_dataset(result, work_dir):
    assert (work_dir / "database.db").is_file()
    assert sorted(p.name for p in (work_dir / "images").iterdir()) == [f"{i:05d}.png" for i in range(N)]
    model = read_colmap(work_dir / "sparse" / "0")
    cams = result.registered_cameras()
    assert model.names == [f"{i:05d}.png" for i in range(N) if result.registered[i]]
    assert torch.allclose(model.cameras.c2w, cams.c2w, atol=1e-5)
    assert torch.allclose(model.cameras.fxfycxcy, cams.fxfycxcy)


def test_sfm_points_lie_on_the_ground_truth_surfaces(views, result):
    """After the Sim(3) that maps SfM camera centres onto the true ones, the sparse points sit on the rendered
    depth maps: the point cloud is in the same frame and scale as the returned cameras."""
    reg = result.registered
    scale, R, t = umeyama(result.cameras.centers[reg].double(), views.cameras.centers[reg].double())
    xyz = apply_sim3(result.points.xyz.double(), scale, R, t)
    rel_err = []
    for i in torch.nonzero(reg).flatten().tolist():
        cam = views.cameras[i].to(torch.float64)
        uv, z = project(xyz, cam.fxfycxcy, cam.w2c)
        px = uv.floor().long()
        inside = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < SIZE) & (px[:, 1] >= 0) & (px[:, 1] < SIZE)
        depth = views.depths[i][px[inside, 1], px[inside, 0]].double()
        seen = depth > 0
        rel_err.append(((z[inside][seen] - depth[seen]) / depth[seen]).abs())
    rel_err = torch.cat(rel_err)
    assert rel_err.numel() > len(result.points)  # most points are inside several views
    # Views 12 degrees apart at 192 px: a few tenths of a degree of rotation error bias triangulated depth by a
    # few percent (3 % measured); points in a wrong frame or scale would miss by far more. Occluded points (seen
    # by SfM in some views, hidden behind an object in another) make up the rest.
    assert float(rel_err.median()) < 0.06
    assert float((rel_err < 0.1).double().mean()) > 0.8


def test_sfm_from_files_with_exif_rotation_and_sequential_matching(views, result, tmp_path):
    """A folder of files, natural-sorted, one of them stored sideways with an EXIF orientation: SfM sees it
    upright (as manyview's image reader does) and recovers the same poses as from the tensors."""
    names = [f"view{i * 5}.png" for i in range(N)]  # view0, view5, view10...: natural order != lexical order
    for i, name in enumerate(names):
        write_image(tmp_path / name, views.images[i])
    rotated = tmp_path / names[2]
    upright = Image.open(rotated).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, format="PNG", exif=exif)
    image, _ = read_image(rotated)
    assert torch.allclose(image, views.images[2], atol=1 / 255 + 1e-6)  # the file shows the original view upright

    res = run_colmap_sfm(tmp_path, matcher="sequential", progress=False)
    assert res.names == names
    assert res.num_registered >= N - 1 and bool(res.registered[2])
    reg = res.registered
    metrics = pose_metrics(res.cameras[reg], views.cameras[reg])
    assert metrics["RRA@5"] == 100.0 and metrics["RTA@5"] >= 90.0, metrics
    both = reg & result.registered
    assert pose_metrics(res.cameras[both], result.cameras[both])["RRA@5"] == 100.0


def test_sfm_that_registers_nothing_returns_an_empty_result():
    blank = Views(torch.full((3, 3, 64, 96), 0.5))  # no texture: no features, no model
    res = run_colmap_sfm(blank, progress=False)
    assert res.registration_rate == 0.0 and res.num_models == 0 and not res.registered.any()
    assert torch.isnan(res.cameras.c2w).all()
    # intrinsics fall back on COLMAP's prior: focal 1.2 x the longer side, centred principal point
    assert torch.allclose(res.cameras.fxfycxcy, torch.tensor([1.2 * 96, 1.2 * 96, 48.0, 32.0]).expand(3, 4))
    assert (res.cameras.image_size == torch.tensor([64, 96])).all()
    assert len(res.points) == 0 and np.isnan(res.mean_reprojection_error)


def test_sfm_per_image_cameras_keep_each_files_size(tmp_path):
    files = [_png(tmp_path / "a.png", (40, 30)), _png(tmp_path / "b.png", (30, 40)), _png(tmp_path / "c.png")]
    res = run_colmap_sfm(files, single_camera=False, progress=False)  # textureless: nothing registers
    assert res.names == ["a.png", "b.png", "c.png"] and not res.registered.any()
    assert res.cameras.image_size.tolist() == [[30, 40], [40, 30], [24, 32]]
    assert torch.allclose(res.cameras.fxfycxcy, torch.tensor(
        [[48.0, 48.0, 20.0, 15.0], [48.0, 48.0, 15.0, 20.0], [38.4, 38.4, 16.0, 12.0]]))


def test_largest_model_is_kept():
    def model(images, points):
        return SimpleNamespace(num_reg_images=lambda: images, num_points3D=lambda: points)

    a, b, c = model(4, 100), model(7, 50), model(7, 80)
    assert _largest({0: a, 1: b, 2: c}) == (c, 3)
    assert _largest({}) == (None, 0)


def _png(path: Path, size=(32, 24)) -> Path:
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


@pytest.mark.parametrize("case", ["empty list", "empty folder", "one file", "one view", "missing file",
                                  "corrupt file", "duplicate file", "mixed sizes", "camera model", "matcher"])
def test_sfm_rejects_bad_input(case, tmp_path):
    good = [_png(tmp_path / "a.png"), _png(tmp_path / "b.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    args, kwargs, where = {
        "empty list": ([], {}, None),
        "empty folder": (empty, {}, empty),
        "one file": (good[0], {}, good[0]),
        "one view": (Views(torch.rand(1, 3, 8, 8)), {}, None),
        "missing file": ([good[0], tmp_path / "nope.png"], {}, tmp_path / "nope.png"),
        "corrupt file": ([good[0], tmp_path / "bad.png"], {}, tmp_path / "bad.png"),
        "duplicate file": ([good[0], good[1], tmp_path / "." / "a.png"], {}, tmp_path / "." / "a.png"),
        "mixed sizes": (good + [_png(tmp_path / "c.png", (24, 32))], {}, tmp_path / "c.png"),
        "camera model": (good, {"camera_model": "OPENCV_FISHEYE"}, None),
        "matcher": (good, {"matcher": "vocabtree"}, None),
    }[case]
    with pytest.raises(ManyviewError) as info:
        run_colmap_sfm(args, progress=False, **kwargs)
    if where is not None:
        assert info.value.path == str(where)
    assert not list(tmp_path.glob("**/database.db"))


# ------------------------------------------------------------------------------------------- lens distortion
K_TRUE = -0.12  # SIMPLE_RADIAL k: barrel distortion, about 9 px at the corners of a 192 px image


def _distorted_views(k: float, n: int = 6, size: int = SIZE, pad: int = 40):
    """Synthetic views as a lens with SIMPLE_RADIAL distortion ``k`` records them (COLMAP's model: normalised
    x_d = x_u (1 + k r_u^2)), and a wider pinhole render of each view (principal point shifted by ``pad``) as
    the undistorted ground truth."""
    import torch.nn.functional as F

    from manyview.scene import Cameras
    from manyview.synth.render import render
    from manyview.synth.scene import make_scene

    scene, views = generate(SEED, "object", n, size, size, arc_deg=60.0)
    cams = views.cameras
    wide = Cameras(cams.fxfycxcy + torch.tensor([0.0, 0.0, pad, pad]), cams.c2w,
                   torch.tensor([size + 2 * pad, size + 2 * pad]).expand(n, 2))
    truth = render(make_scene(SEED, "object"), wide, supersample=2).images  # (n, 3, S + 2p, S + 2p)
    f, c = float(cams.fx[0]), float(cams.cx[0])
    centres = (torch.arange(size, dtype=torch.float64) + 0.5 - c) / f
    yd, xd = torch.meshgrid(centres, centres, indexing="ij")
    xu, yu = xd.clone(), yd.clone()
    for _ in range(30):  # invert the distortion by fixed-point iteration
        factor = 1 + k * (xu ** 2 + yu ** 2)
        xu, yu = xd / factor, yd / factor
    grid = torch.stack([(xu * f + c + pad), (yu * f + c + pad)], -1) / (size + 2 * pad) * 2 - 1
    distorted = F.grid_sample(truth, grid.float()[None].expand(n, -1, -1, -1), align_corners=False)
    return Views(distorted.clamp(0, 1), cameras=cams), truth, pad


def _sample_pinhole(truth: torch.Tensor, pad: int, c_true: float, principal_point, size) -> torch.Tensor:
    """The wide ground-truth render resampled onto a pinhole image of ``size`` (H, W) with ``principal_point``
    (same focal length: the undistorter keeps the estimated one, whose small error SfM's scale absorbs)."""
    import torch.nn.functional as F

    cx, cy = (float(v) for v in principal_point)
    h, w = size
    xs = torch.arange(w, dtype=torch.float64) + 0.5 - cx + c_true + pad
    ys = torch.arange(h, dtype=torch.float64) + 0.5 - cy + c_true + pad
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1) / truth.shape[-1] * 2 - 1
    return F.grid_sample(truth[None], grid.float()[None], align_corners=False)[0]


def test_sfm_estimates_lens_distortion_and_writes_undistorted_pinhole_images(tmp_path):
    """Photos through a barrel-distorting lens: SIMPLE_RADIAL recovers k, the poses stay exact, and the
    undistorted images with their PINHOLE cameras match a true pinhole render far better than the input did."""
    from manyview.io.colmap import read_colmap_dataset

    distorted, truth, pad = _distorted_views(K_TRUE)
    gt = distorted.cameras
    res = run_colmap_sfm(distorted, camera_model="SIMPLE_RADIAL", undistorted_dir=tmp_path / "und", progress=False)
    assert res.num_registered == len(distorted)
    f, cx, cy, k = res.camera_params[0]
    assert abs(k / K_TRUE - 1) < 0.2, (k, K_TRUE)
    assert abs(f / float(gt.fx[0]) - 1) < 0.02
    assert pose_metrics(res.cameras, gt)["RRA@5"] == 100.0
    assert set(res.timings) == {"features", "matching", "mapping", "undistortion"}
    assert res.undistorted_dir == str(tmp_path / "und")

    views, model = read_colmap_dataset(tmp_path / "und")  # a plain COLMAP dataset with PINHOLE cameras
    assert model.distorted == {} and model.names == res.model_names
    c_true = float(gt.cx[0])
    # compared at a quarter of the resolution: resampling twice blurs fine texture, misplaced pixels stay misplaced
    blur = lambda image: torch.nn.functional.avg_pool2d(image[None], 4)[0]  # noqa: E731
    undistorted_err, distorted_err = [], []
    for i in range(len(views)):
        cam = views.cameras[i]
        expected = _sample_pinhole(truth[i], pad, c_true, cam.fxfycxcy[2:], (views.height, views.width))
        undistorted_err.append(float((blur(views.images[i]) - blur(expected)).abs().mean()))
        as_pinhole = _sample_pinhole(truth[i], pad, c_true, gt.fxfycxcy[i, 2:], (SIZE, SIZE))
        distorted_err.append(float((blur(distorted.images[i]) - blur(as_pinhole)).abs().mean()))
    # measured: 0.003-0.004 against 0.03-0.036 for the distorted input
    assert max(undistorted_err) < 0.25 * min(distorted_err), (undistorted_err, distorted_err)


def test_why_few_registered_names_the_measured_cause():
    def result(features, pairs, models=1, n=4):
        return SimpleNamespace(names=[f"{i}.png" for i in range(n)], features=torch.tensor(features),
                               verified_pairs=pairs, num_models=models)

    why = lambda r: SfmResult.why_few_registered(r)  # noqa: E731
    assert why(result([10, 20, 5, 40], 0)).startswith("too little texture: a median of 10 SIFT features")
    assert why(result([900, 800, 700, 600], 1)).startswith("too few matches: only 1 of 6 image pairs")
    assert why(result([900, 800, 700, 600], 5, models=2)).startswith("the photos fall into groups")
    assert "no well-conditioned start" in why(result([900, 800, 700, 600], 5))


def test_require_registered_is_one_sentence_with_the_count():
    blank = Views(torch.full((3, 3, 64, 96), 0.5), names=["a.png", "b.png", "c.png"])
    res = run_colmap_sfm(blank, progress=False)
    assert res.features.tolist() == [0, 0, 0] and res.verified_pairs == 0
    with pytest.raises(ManyviewError) as info:
        require_registered(res, 3, "photos")
    message = str(info.value)
    assert "COLMAP registered 0 of 3 photos" in message and "too little texture" in message
    assert "\n" not in message and info.value.path == "photos"
    require_registered(res, 0)  # enough: no error
