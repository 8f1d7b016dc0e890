"""The one exception type users see.

Every reader, writer and command raises :class:`ManyviewError` for bad input, with the offending path and a
sentence saying what is wrong. The CLI prints ``str(error)`` as one line and exits non-zero; tracebacks only
appear with ``--debug``.
"""

from __future__ import annotations

import os


class ManyviewError(Exception):
    """Bad input or an impossible request, explained in one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
