"""``manyview.pipeline``: photos -> poses -> splat -> evaluation -> orbit -> report.html, stage by stage, each
stage committed whole; an interrupted run resumes from its first unfinished stage and the splat's checkpoint."""

import base64
import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from manyview.errors import ManyviewError
from manyview.io.images import read_image
from manyview.metrics.image import psnr
from manyview.pipeline import STAGES, PipelineRun, RunConfig
from manyview.pipeline import stages as pipeline_stages
from manyview.pipeline.report import top_view_svg
from manyview.pipeline.run_folder import SPLAT_PARTIAL, is_committed, read_marker
from manyview.splat.trainer import SplatTrainer
from manyview.synth import sample_scene

pytest.importorskip("pycolmap")

# Small and quick: the sample's 6 photos at 64 px wide, a few splat steps, a 3-frame orbit.
FAST = dict(iterations=24, max_width=64, orbit_frames=3, checkpoint_every=10)


@pytest.fixture(scope="module")
def photos():
    return sample_scene()[1]


@pytest.fixture(scope="module")
def finished(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    lines = []
    run = PipelineRun(photos, out, RunConfig(**FAST), source="sample", commands=["manyview run --sample"],
                      progress=False, log=lines.append)
    result = run.run()
    return out, result, lines


def test_a_run_commits_every_stage_and_reports_them(finished):
    out, result, lines = finished
    assert all(is_committed(out, stage) for stage in STAGES)
    assert not (out / SPLAT_PARTIAL).exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert [line.split(":")[0] for line in lines if re.match(r"\[\d/5\] \w+: ", line)] == [
        f"[{k}/5] {s}" for k, s in enumerate(STAGES, 1) for _ in range(2)]  # started, finished
    poses = read_marker(out, "poses")["info"]
    assert poses["registered"] == poses["photos"] == 6 and poses["model"] == "colmap"
    splat = read_marker(out, "splat")["info"]
    assert splat["steps"] == FAST["iterations"] and splat["held_out"] == 1 and splat["train_views"] == 5
    assert splat["image_size"][1] == FAST["max_width"]
    assert (out / "splat" / "splat.ply").is_file() and (out / "poses" / "summary.json").is_file()
    orbit = read_marker(out, "orbit")["info"]
    assert orbit["frames"] == 3 and len(orbit["stills"]) == 3
    assert result["report"] == out / "report.html" and result["psnr"] == read_marker(out, "evaluate")["info"]["psnr"]


def test_held_out_scores_are_those_of_the_written_render_and_photo(finished):
    out, _, _ = finished
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    (row,) = metrics["held_out"]  # every 8th of 6 photos: the first
    assert row["name"] == "00000.png" and row["index"] == 0
    load = lambda name: read_image(out / "evaluate" / name)[0][None]  # noqa: E731
    measured = float(psnr(load(row["render"]), load(row["photo"]))[0])
    assert abs(measured - row["psnr"]) < 0.1  # 8-bit PNGs of the compared float images
    assert metrics["psnr"] == row["psnr"] and len(metrics["train"]) == 5
    # with the render's colour transform fitted to the photo (identity is one candidate) it can only come closer
    from manyview.splat.appearance import exposure_fitted

    fitted = exposure_fitted(load(row["render"]), load(row["photo"]))
    # (refitted on the 8-bit PNGs: the fit of a low-contrast 24-step render magnifies their rounding a little)
    assert abs(float(psnr(fitted, load(row["photo"]))[0]) - row["psnr_exposure_fitted"]) < 0.5
    assert row["psnr_exposure_fitted"] >= row["psnr"] - 1e-6 and metrics["psnr_exposure_fitted"] is not None


def test_the_report_is_one_self_contained_page(finished):
    out, _, _ = finished
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img src=['\"]([^'\"]+)", page)
    assert len(sources) == 6 + 2 + 3  # thumbnails, held-out photo and render, orbit stills
    assert all(s.startswith("data:image/jpeg;base64,") for s in sources)
    for s in sources:  # each decodes to an image
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert page.count("<svg") == 1 and page.count("<circle") >= 6 + 100  # 6 cameras and the points
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert f"{metrics['psnr']:.2f} dB" in page and "manyview run --sample" in page
    for stage in STAGES[:-1]:
        assert f"<th>{stage}</th>" in page


def test_top_view_draws_cameras_from_above_around_their_points():
    """Cameras on a horizontal circle (y down = world -z up) looking at the origin: seen from above, the camera
    dots form a circle around the point cloud's dot and their direction strokes point inwards."""
    from manyview.geometry.poses import look_at

    n = 8
    angles = torch.arange(n, dtype=torch.float64) * 2 * torch.pi / n
    eyes = torch.stack([3 * angles.cos(), 3 * angles.sin(), torch.zeros(n, dtype=torch.float64)], -1)
    c2w = look_at(eyes, torch.zeros(n, 3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    svg = top_view_svg(c2w, torch.zeros(50, 3), None, [False] * n)
    lines = [tuple(float(v) for v in m) for m in re.findall(
        r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"', svg)]
    assert len(lines) == n
    centre = torch.tensor([[float(v) for v in m] for m in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="1.2"',
                                                                       svg)]).mean(0)
    for x1, y1, x2, y2 in lines:
        start = torch.tensor([x1, y1]) - centre
        end = torch.tensor([x2, y2]) - centre
        assert end.norm() < start.norm()  # looking inwards
    radii = torch.tensor([(torch.tensor([x1, y1]) - centre).norm() for x1, y1, _, _ in lines])
    assert float(radii.std() / radii.mean()) < 0.02  # a circle, not a line: the view is from above


def test_resume_after_an_interrupted_splat_continues_from_its_checkpoint(photos, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = SplatTrainer.train_step

    def interrupted_at_15(self):
        if self.step == 15:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(SplatTrainer, "train_step", interrupted_at_15)
    run = PipelineRun(photos, out, RunConfig(**FAST), progress=False, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert is_committed(out, "poses") and not is_committed(out, "splat") and not (out / "splat").exists()
    assert sorted(p.name for p in (out / SPLAT_PARTIAL / "checkpoints").iterdir()) == ["step_000010"]
    message = run.stopped_message()
    assert "(poses)" in message and "checkpoint at step 10" in message and "--resume" in message
    monkeypatch.setattr(SplatTrainer, "train_step", real_step)

    poses_marker = (out / "poses" / "stage.json").read_bytes()
    monkeypatch.setattr(pipeline_stages, "poses", lambda *a, **k: pytest.fail("a committed stage was redone"))
    lines = []
    resumed = PipelineRun(photos, out, RunConfig(**FAST), progress=False, log=lines.append)
    resumed.run(resume=True)
    assert "[1/5] poses: finished earlier, kept" in lines
    assert "  continuing from the checkpoint at step 10" in lines
    assert (out / "poses" / "stage.json").read_bytes() == poses_marker
    splat = read_marker(out, "splat")["info"]
    assert splat["resumed_from"] == 10 and splat["steps"] == FAST["iterations"]
    assert all(is_committed(out, stage) for stage in STAGES)

    # resuming a finished run keeps everything; other options are refused, naming the option
    lines.clear()
    PipelineRun(photos, out, RunConfig(**FAST), progress=False, log=lines.append).run(resume=True)
    assert all("finished earlier, kept" in line for line in lines)
    with pytest.raises(ManyviewError, match="--resume: the earlier run used --iterations 24, not 30"):
        PipelineRun(photos, out, RunConfig(**{**FAST, "iterations": 30}), progress=False).run(resume=True)
    with pytest.raises(ManyviewError, match="not the photos of the earlier run"):
        PipelineRun(photos[:5], out, RunConfig(**FAST), progress=False).run(resume=True)


def test_a_later_stage_is_redone_when_an_earlier_one_is_not_committed(finished, tmp_path):
    """Stages depend on the ones before: removing evaluate's marker redoes evaluate, orbit and the report."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    (out / "evaluate" / "stage.json").unlink()
    lines = []
    PipelineRun(sample_scene()[1], out, RunConfig(**FAST), progress=False, log=lines.append).run(resume=True)
    kept = [line.split("]")[1].split(":")[0].strip() for line in lines if "finished earlier, kept" in line]
    assert kept == ["poses", "splat"] and all(is_committed(out, s) for s in STAGES)


def test_a_failure_in_the_first_stage_leaves_nothing(tmp_path, monkeypatch, photos):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_stages, "poses", stop)
    out = tmp_path / "run"
    run = PipelineRun(photos, out, RunConfig(**FAST), progress=False, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert not out.exists() and run.stopped_message().startswith("nothing was kept")
    assert list(tmp_path.iterdir()) == []


def test_run_config_refuses_bad_values():
    from manyview.errors import InvalidValue

    for bad in ({"iterations": 0}, {"max_width": 8}, {"test_every": -1}, {"orbit_frames": 0},
                {"weights": "w", "poses": "colmap"}, {"backend": "opengl"}):
        with pytest.raises(InvalidValue):
            RunConfig(**bad)


def test_the_splat_steps_default_to_those_of_the_photos():
    from manyview.pipeline.config import DEFAULT_ITERATIONS, SAMPLE_ITERATIONS

    assert RunConfig().resolved().iterations == DEFAULT_ITERATIONS
    assert RunConfig().resolved(sample=True).iterations == SAMPLE_ITERATIONS < DEFAULT_ITERATIONS
    assert RunConfig(iterations=24).resolved(sample=True).iterations == 24  # what the user says wins
    assert PipelineRun([], "unused").config.iterations == DEFAULT_ITERATIONS


def test_real_photos_get_a_far_shell_and_exposure_by_default_and_the_sample_neither():
    from manyview.pipeline.config import DEFAULT_FAR_POINTS

    photos = RunConfig().resolved()
    assert photos.far_points == DEFAULT_FAR_POINTS > 0 and photos.exposure
    assert RunConfig().resolved(sample=True).far_points == 0 and not RunConfig().resolved(sample=True).exposure
    assert RunConfig(far_points=0).resolved().far_points == 0  # what the user says wins
    assert not RunConfig(exposure=False).resolved().exposure


def test_the_photo_options_reach_the_splat_trainer():
    """--exposure and --far-points are the trainer's; a far shell also turns on pruning relative to distance."""
    from manyview.pipeline.stages import _training_config

    plain = _training_config(RunConfig(iterations=10, exposure=False, far_points=0))
    assert not plain.exposure and plain.far_points == 0 and not plain.densify.prune_scale_by_distance
    photo = _training_config(RunConfig(iterations=10, exposure=True, far_points=500))
    assert photo.exposure and photo.far_points == 500 and photo.densify.prune_scale_by_distance
