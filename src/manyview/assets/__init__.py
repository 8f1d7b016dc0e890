"""The models manyview trained itself, shipped inside the package: the default when no ``--weights`` is given.

Each is a model folder (``config.json`` + ``model.safetensors``) beside the ``RECIPE.md`` with the one command that
made it and its ``training_log.csv``. An installation may leave the weights out; :func:`bundled_model_dir` then
says None and the caller asks for ``--weights``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# model family -> folder name in this package
BUNDLED: dict[str, str] = {
    "fast3r": "fast3r_bundled",
    "lvsm": "lvsm_bundled",
    "efficient-lvsm": "efficient_lvsm_bundled",
    "condense": "condense_bundled",
}


def bundled_path(model: str) -> Path:
    """Where the bundled ``model`` (a key of :data:`BUNDLED`) lives, whether or not it is installed."""
    if model not in BUNDLED:
        raise ValueError(f"no bundled model is called {model!r}; expected one of {', '.join(BUNDLED)}")
    return Path(str(resources.files(__name__).joinpath(BUNDLED[model])))


def bundled_model_dir(model: str) -> Path | None:
    """The folder of the bundled ``model`` when this installation ships it (config.json and weights), else None."""
    path = bundled_path(model)
    return path if (path / "config.json").is_file() and (path / "model.safetensors").is_file() else None


__all__ = ["BUNDLED", "bundled_model_dir", "bundled_path"]
