"""The thin command line of issue 13: library logic lives in the library (one home each), commands nest the
library's configs under their old option names, and the helpers the commands share do what they say."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import hidden

from manyview.cli.main import main
from manyview.errors import ManyviewError

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- commands stay thin
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_commands_do_not_borrow_from_each_other_and_benchmarks_use_the_library():
    """cli/train.py once took presets from cli/nvs.py, and bench/splat_quality.py a loader from cli/splat.py."""
    shared = {"manyview.cli.main", "manyview.cli.common"}
    for path in sorted((ROOT / "src" / "manyview" / "cli").glob("*.py")):
        borrowed = {m for m in _imports(path) if m.startswith("manyview.cli.") and m not in shared}
        if path.name != "main.py":
            assert not borrowed, (path.name, borrowed)
    for path in sorted((ROOT / "bench").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith("manyview.cli")}, path.name


def _help(*command: str) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        main([*command, "--help"])
    return buffer.getvalue()


# the options each command had before its library config was nested in it: they must all still be there
OLD_OPTIONS = {
    ("splat",): ["--out", "--iterations", "--resume", "--no-resume", "--max-width", "--sh-degree", "--eval-every",
                 "--checkpoint-every", "--scale-schedule", "--no-scale-schedule", "--random-background",
                 "--no-random-background", "--random-init-points", "--seed"],
    ("reconstruct",): ["--out", "--weights", "--sample", "--model", "--max-views", "--device", "--dtype", "--size",
                       "--min-conf-percentile", "--max-points", "--seed", "--graph", "--ga-iterations",
                       "--batch-size"],
    ("synth",): ["--out", "--kind", "--views", "--height", "--width", "--seed", "--supersample"],
    ("render",): ["--out", "--cameras", "--orbit", "--width", "--height", "--background", "--fps"],
}


@pytest.mark.parametrize("command", sorted(OLD_OPTIONS))
def test_option_names_are_unchanged(command):
    text = _help(*command)
    for option in OLD_OPTIONS[command]:
        assert f"{option} " in text or f"{option}," in text, (command, option)


def test_splat_options_fill_the_library_config(tiny_dataset, tmp_path, monkeypatch):
    """`splat` hands the library's own SplatTrainConfig to the trainer, its fields set by the same options."""
    import manyview.splat.trainer as trainer_module
    from manyview.cli.main import _parse

    command = _parse(["splat", str(tiny_dataset), "--out", str(tmp_path / "o"), "--iterations", "7",
                      "--sh-degree", "1", "--eval-every", "3", "--checkpoint-every", "2", "--no-scale-schedule",
                      "--random-init-points", "5", "--seed", "4", "--max-width", "16"])
    assert isinstance(command.config, trainer_module.SplatTrainConfig)
    assert (command.config.iterations, command.config.sh_degree, command.config.eval_every,
            command.config.checkpoint_every, command.config.scale_schedule, command.config.random_init_points,
            command.config.seed) == (7, 1, 3, 2, False, 5, 4)
    assert _parse(["splat", "x", "--out", "y"]).config.scale_schedule  # the command's default, as before
    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(views, out, config, points=None, device=None):
        seen.update(config=config, size=(views.height, views.width), device=device)
        raise Stop

    monkeypatch.setattr(trainer_module, "SplatTrainer", fake_trainer)
    with pytest.raises(Stop):
        command.run()
    assert seen["config"] is command.config and seen["size"] == (12, 16)
    assert seen["device"].type == "cpu"  # auto on a machine without CUDA and gsplat


def test_reconstruct_ga_iterations_sets_the_library_config():
    from manyview.cli.main import _parse
    from manyview.recon import GlobalAlignmentConfig

    command = _parse(["reconstruct", "--sample", "--ga-iterations", "7", "--ga.lr", "0.5"])
    assert isinstance(command.ga, GlobalAlignmentConfig)
    assert (command.ga.iterations, command.ga.lr) == (7, 0.5)
    assert _parse(["reconstruct", "--sample"]).ga.iterations == GlobalAlignmentConfig().iterations


# --------------------------------------------------------------------------------------------- splat training views
def test_training_views_are_downscaled_as_the_command_always_did(tiny_dataset):
    """load_training_views (moved out of cli/splat.py onto the one resize) against the plain formula it replaced:
    bilinear with antialiasing to (round(h * w' / w), w'), cameras rescaled."""
    import torch.nn.functional as F

    from manyview.io.dataset import load_dataset
    from manyview.splat.data import load_training_views

    full = load_dataset(tiny_dataset)
    views, points = load_training_views(tiny_dataset, 16)
    expected = F.interpolate(full.images, size=(12, 16), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)
    torch.testing.assert_close(views.images, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(views.cameras.fxfycxcy, full.cameras.resized(12, 16).fxfycxcy.float())
    assert views.cameras.dtype == torch.float32 and points is not None and len(points.xyz) > 0
    same, _ = load_training_views(tiny_dataset, 0)  # 0 keeps the full size
    assert (same.height, same.width) == (24, 32)
    with pytest.raises(ManyviewError, match="max_width"):
        load_training_views(tiny_dataset, -1)
    with pytest.raises(ManyviewError, match="manyview reconstruct"):
        load_training_views(tiny_dataset / "images", 16)


# --------------------------------------------------------------------------------------------- bundled weights
def test_bundled_weights_have_one_home():
    from manyview.assets import BUNDLED, bundled_model_dir, bundled_path

    for model in BUNDLED:
        folder = bundled_model_dir(model)
        assert folder is not None and (folder / "config.json").is_file(), model
        assert folder == bundled_path(model)
    with pytest.raises(ValueError):
        bundled_path("nonsense")


# --------------------------------------------------------------------------------------------- device choice
def test_device_choice(monkeypatch):
    from manyview.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ManyviewError, match="unknown device"):
        resolve_device("gpu7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ManyviewError, match="no CUDA"):
        resolve_device("cuda")


# --------------------------------------------------------------------------------------------- video writing
class _FakeFfmpeg:
    """imageio_ffmpeg's write_frames protocol (a generator fed with raw RGB frames), recording what it gets."""

    def __init__(self):
        self.calls = []

    def write_frames(self, path, size, **kwargs):
        record = {"path": path, "size": size, "kwargs": kwargs, "frames": []}
        self.calls.append(record)

        def generator():
            with open(path, "wb") as f:
                while True:
                    data = yield
                    if data is None:
                        break
                    record["frames"].append(data)
                    f.write(data)

        return generator()


def test_video_is_written_atomically_from_tensors_or_arrays(tmp_path, monkeypatch):
    import numpy as np

    from manyview.io import video

    fake = _FakeFfmpeg()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", fake)
    monkeypatch.setattr(video, "video_available", lambda: True)
    frames = torch.rand(3, 3, 6, 10)
    out = video.write_video(tmp_path / "v.mp4", frames, fps=12)
    assert out == tmp_path / "v.mp4" and out.is_file() and hidden(tmp_path) == []
    call = fake.calls[0]
    assert call["size"] == (10, 6) and call["kwargs"]["fps"] == 12 and len(call["frames"]) == 3
    first = np.frombuffer(call["frames"][0], dtype=np.uint8).reshape(6, 10, 3)
    assert np.array_equal(first, (frames[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    with pytest.raises(RuntimeError):  # a failure while writing leaves no file and no temporary
        with video.open_video(tmp_path / "w.mp4", 12) as writer:
            writer.add(np.zeros((4, 4, 3), np.uint8))
            raise RuntimeError("stop")
    assert not (tmp_path / "w.mp4").exists() and hidden(tmp_path) == []
    monkeypatch.setattr(video, "video_available", lambda: False)
    assert video.write_video(tmp_path / "x.mp4", frames, fps=12) is None and not (tmp_path / "x.mp4").exists()


# --------------------------------------------------------------------------------------------- output folders
def test_output_folder_rules(tmp_path):
    from manyview.io.atomic import check_output_file, check_output_folder, make_folder

    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "render.json").write_text("{}")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for ok in ("ours", "empty", "new/deeper"):
        check_output_folder(tmp_path / ok, "render.json")
    for bad, why in (("theirs", "refusing"), ("file", "not a folder"), ("file/sub", "is a file")):
        with pytest.raises(ManyviewError, match=why):
            check_output_folder(tmp_path / bad, "render.json")
    with pytest.raises(ManyviewError, match="is a folder"):
        check_output_file(tmp_path / "ours")
    with pytest.raises(ManyviewError, match="is a file"):
        check_output_file(tmp_path / "file" / "x.json")
    with pytest.raises(ManyviewError, match="is a file"):
        make_folder(tmp_path / "file" / "sub")
    assert make_folder(tmp_path / "a" / "b").is_dir()


def test_a_killed_build_is_swept_but_a_live_one_is_not(tmp_path):
    from manyview.io.atomic import _tag, atomic_directory, remove_stale

    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _tag().rsplit("-", 1)[0]
    stale = tmp_path / f".out.tmp-{host}-{dead.stdout.strip()}-abc123"
    live = tmp_path / f".out.tmp-{host}-{os.getpid()}-def456"
    other_host = tmp_path / ".out.tmp-elsewhere-1-ghi789"
    for p in (stale, live, other_host):
        p.mkdir()
    assert remove_stale(target) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])
    # killed between the two renames of a replacement: the previous output is put back
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "kept").write_text("previous")
    remove_stale(target)
    assert (target / "kept").read_text() == "previous"
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]


def test_atomic_writes_name_the_target_not_a_temporary(tmp_path):
    from manyview.io.atomic import atomic_directory, atomic_open

    (tmp_path / "file").write_text("x")
    with pytest.raises(ManyviewError, match="not a folder") as e:
        with atomic_directory(tmp_path / "file"):
            pass
    assert str(tmp_path / "file") in str(e.value) and ".tmp" not in str(e.value)
    with pytest.raises(ManyviewError, match="is a file") as e:
        with atomic_open(tmp_path / "file" / "x.json") as f:
            f.write("{}")
    assert ".tmp" not in str(e.value)
    with pytest.raises(ManyviewError, match="is a folder"):
        with atomic_open(tmp_path) as f:
            f.write("{}")
    assert (tmp_path / "file").read_text() == "x"


# --------------------------------------------------------------------------------------------- interruptions
def test_splat_interrupted_says_what_it_kept(tiny_dataset, tmp_path, capsys, monkeypatch):
    import manyview.splat.trainer as trainer_module

    def interrupted(self, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.SplatTrainer, "train", interrupted)
    out = tmp_path / "run"
    assert main(["splat", str(tiny_dataset), "--out", str(out), "--max-width", "16", "--iterations", "2"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("manyview: interrupted;") and "checkpoints" in err and "--resume" in err
    assert "no partial output" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """A real SIGINT to the installed command: exit status 130 and one line, no traceback."""
    code = ("import sys, time\n"
            "import manyview.cli.synth as s\n"
            "def slow(self):\n"
            "    print('ready', flush=True); time.sleep(60)\n"
            "s.Synth.run = slow\n"
            "from manyview.cli.main import main\n"
            "sys.exit(main(['synth', '--out', sys.argv[1]]))\n")
    # SIGINT as a terminal delivers it, even when these tests run in a background job (which ignores SIGINT, and
    # its children inherit that)
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().count("\n") == 0 and "left as it was" in err, err
    assert not (tmp_path / "s").exists()


def test_invalid_values_name_the_option_as_typed(capsys):
    """A library config's check names its field; the command line names the option that set it."""
    from manyview.errors import InvalidValue
    from manyview.train.config import TrainConfig

    with pytest.raises(InvalidValue, match="^steps must be at least 1, got 0$"):
        TrainConfig(steps=0)
    assert main(["train", "toy", "--train.steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "manyview: error: --train.steps must be at least 1, got 0"
    assert main(["train", "fast3r", "tiny", "--train.optim.lr=-1"]) == 2
    assert "--train.optim.lr must be a number >= 0, got -1" in capsys.readouterr().err
