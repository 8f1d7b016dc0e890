import os
import stat

import pytest

from manyview.io.atomic import atomic_directory, atomic_open, atomic_path


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_interrupted_directory_build_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "scene") as d:
            (d / "a.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    # mkstemp / mkdtemp create private 0600 / 0700 entries; finished outputs must follow the umask instead.
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.bin") as p:
            p.write_bytes(b"1")
        with atomic_directory(tmp_path / "d") as d:
            (d / "x").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_file_writer_killed_mid_write_leaves_a_temporary_that_remove_stale_clears(tmp_path):
    """SIGKILL skips every cleanup: the temporary stays. Its name says which process made it, so the next writer
    of the same path (the streamed splat PLY calls remove_stale first) removes it, and leaves a live one alone."""
    import subprocess
    import sys

    from manyview.io.atomic import remove_stale

    target = tmp_path / "splat.ply"
    code = ("import os, signal, sys\nfrom manyview.io.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == -9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".splat.ply.tmp-") and not target.exists()
    with atomic_path(target) as live:
        live.write_bytes(b"live")
        assert remove_stale(target) == [left]
        assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splat.ply"]
