"""The one exception type users see.

Every reader, writer and command raises :class:`ManyviewError` for bad input, with the offending path and a
sentence saying what is wrong. The CLI prints ``str(error)`` as one line and exits non-zero; tracebacks only
appear with ``--debug``.

A setting out of its range raises :class:`InvalidValue` (through :func:`require`), which keeps the setting's name
apart from the sentence: a config field is named as in Python (``iterations``), and the command line names the
option the user typed instead (``--iterations``, ``--train.steps``).
"""

from __future__ import annotations

import os


class ManyviewError(Exception):
    """Bad input or an impossible request, explained in one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class InvalidValue(ManyviewError):
    """A setting outside what it can be: "``name`` must be ``requirement``, got ``value``"."""

    def __init__(self, name: str, requirement: str, value):
        self.name, self.requirement, self.value = name, requirement, value
        super().__init__(self.named(name))

    def named(self, name: str) -> str:
        """The sentence with the setting called ``name`` (e.g. the command-line option that set it)."""
        return f"{name} must be {self.requirement}, got {_shown(self.value)}"


def require(condition: bool, name: str, requirement: str, value) -> None:
    """Raise :class:`InvalidValue` unless ``condition``: ``require(n >= 1, "views", "at least 1", n)``."""
    if not condition:
        raise InvalidValue(name, requirement, value)


__all__ = ["InvalidValue", "ManyviewError", "require"]
