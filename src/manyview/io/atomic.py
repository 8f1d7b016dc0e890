"""Atomic output: write to a temporary name beside the target, then rename; and the rules for output folders.

An interrupted run (Ctrl-C, crash, power loss before the rename) leaves either the old file or nothing at the
target path, never a half-written one. ``os.replace`` is atomic on POSIX and Windows within one file system,
which is why the temporary lives in the target's own directory.

Output folders (:func:`check_output_folder`): a command replaces a folder only when it is empty or manyview's own
output (it holds the command's marker file); any other folder, and any file, is refused before work starts. A
folder is built under a temporary name that carries the host and process id (:func:`atomic_directory`), so a
later build of the same target can tell a temporary left by a killed run from one still being written, and
removes it (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator, Sequence

from manyview.errors import ManyviewError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(error: OSError) -> str:
    return (error.strerror or type(error).__name__).lower()


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, or a ManyviewError naming ``path`` (it is a file, or it cannot be created there)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ManyviewError("exists and is not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ManyviewError(f"cannot create this folder: {blocker} is a file", path) from None
        raise ManyviewError(f"cannot create this folder ({_reason(e)})", path) from None
    return path


def check_output_folder(path: str | os.PathLike, markers: str | Sequence[str]) -> Path:
    """Refuse ``path`` as an output folder unless it is absent, empty, or holds one of ``markers`` (the file
    each manyview output of that kind writes); also refuse a place where no folder can be made."""
    path = Path(path)
    markers = (markers,) if isinstance(markers, str) else tuple(markers)
    if path.exists() and not path.is_dir():
        raise ManyviewError("exists and is not a folder; give a new folder for the output", path)
    if path.is_dir():
        if any(path.iterdir()) and not any((path / m).is_file() for m in markers):
            raise ManyviewError("refusing to replace: not an empty folder or an earlier manyview output of this "
                                "kind", path)
        return path
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ManyviewError(f"cannot create this folder: {parent} is a file", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ManyviewError(f"cannot create this folder: {parent} is not writable", path)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse ``path`` as a file to write when it is a folder or no file can be made there; checked before long
    work, so that a run does not end on an error it could have said at the start."""
    path = Path(path)
    if path.is_dir():
        raise ManyviewError("is a folder; expected the path of a file to write", path)
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ManyviewError(f"cannot write this file: {parent} is a file", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ManyviewError(f"cannot write this file: {parent} is not writable", path)
    return path


# ------------------------------------------------------------------------------------------ temporary names
def _host() -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:32] or "host"


def _tag() -> str:
    """host and pid, in a temporary's name: which process made it, to tell stale temporaries from live ones."""
    return f"{_host()}-{os.getpid()}"


def _alive(host: str, pid: str) -> bool:
    if host != _host() or not pid.isdigit():
        return True  # another machine's (shared file system): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what killed builds of the folder ``path`` left beside it; returns what was removed.

    Temporaries ``.NAME.tmp-HOST-PID-*`` whose process no longer runs on this host are deleted. ``.NAME.old`` (the
    previous output, moved aside while the new one is renamed in) is deleted when ``NAME`` exists, and moved back
    when it does not (the run was killed between the two renames).
    """
    path = Path(path)
    parent, name = path.parent, path.name
    removed = []
    if not parent.is_dir():
        return removed
    prefix = f".{name}.tmp-"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix):].rsplit("-", 2)  # HOST (may hold '-') - PID - random
        if len(parts) == 3 and not _alive(parts[0], parts[1]):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    old = parent / f".{name}.old"
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
            removed.append(old)
        else:
            os.replace(old, path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it is renamed onto ``path`` only if the block succeeds.

    Use this for libraries that insist on writing to a path themselves (PIL, safetensors, pycolmap).
    ``suffix`` defaults to the target's suffix so that format detection by extension still works. The temporary's
    name carries this host and process, so that a writer of ``path`` that may have been killed mid-write (a lost
    rank) can clear what it left with :func:`remove_stale` first; ordinary writes skip that (it lists the folder).
    """
    path = Path(path)
    if path.is_dir():
        raise ManyviewError("is a folder; expected the path of a file to write", path)
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ManyviewError(f"cannot write this file: {blocker} is a file", path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_tag()}-",
                                   suffix=path.suffix if suffix is None else suffix, dir=path.parent)
    except OSError as e:
        raise ManyviewError(f"cannot write here ({_reason(e)})", path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions an ordinary open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open()`` that only replaces ``path`` once the ``with`` block has finished without error."""
    if not any(m in mode for m in "wx"):
        raise ValueError("atomic_open is for writing")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a whole directory under a temporary name and rename it into place at the end.

    If ``path`` is a folder it is replaced only after the new one is complete; a file at ``path`` is refused
    (callers decide which folders may be replaced: :func:`check_output_folder`). Temporaries of earlier builds of
    ``path`` killed before they finished are removed first (:func:`remove_stale`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ManyviewError("exists and is not a folder; refusing to replace a file with a folder", path)
    make_folder(path.parent)
    remove_stale(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{_tag()}-", dir=path.parent))
    except OSError as e:
        raise ManyviewError(f"cannot write here ({_reason(e)})", path) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_directory", "atomic_open", "atomic_path", "check_output_file", "check_output_folder", "make_folder",
           "remove_stale"]
