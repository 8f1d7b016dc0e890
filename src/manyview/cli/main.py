"""The ``manyview`` command: subcommands generated from config dataclasses (tyro).

Each subcommand lives in its own module as a dataclass with a ``run()`` method; the dataclass is the whole
interface, so ``manyview synth --help`` documents exactly the fields a Python user would set. This module only
dispatches and turns errors into one line: ``ManyviewError`` (bad input) exits 2, anything else exits 1, Ctrl-C
exits 130 saying what the command kept, and ``--debug`` (anywhere on the command line) shows the traceback
instead.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Union

import tyro

from manyview.errors import InvalidValue, ManyviewError

DEBUG_NOTE = "Add --debug to any command for the full traceback of an error."

# Commands that choose among subcommands (a Union) have no docstring of their own to show in ``manyview --help``.
_DESCRIPTIONS = {
    "train": "Train a model with the shared trainer (one process, or many under torchrun): fast3r, lvsm, "
             "efficient-lvsm or toy, then a preset (tiny, bundled) whose every field can be overridden.",
    "eval": "Score models against ground truth: reconstruction (poses, geometry) or nvs (PSNR, SSIM, LPIPS), "
            "beside COLMAP and naive baselines.",
}


_COMMANDS = {  # name -> (module, class); a command's module is imported only when it runs (or for --help)
    "synth": ("manyview.cli.synth", "Synth"),
    "info": ("manyview.cli.info", "Info"),
    "reconstruct": ("manyview.cli.reconstruct", "Reconstruct"),
    "nvs": ("manyview.cli.nvs", "NVS"),
    "train": ("manyview.cli.train", "Train"),
    "eval": ("manyview.cli.eval", "Eval"),
    "splat": ("manyview.cli.splat", "Splat"),
    "render": ("manyview.cli.render", "Render"),
    "view": ("manyview.cli.view", "View"),
    "features": ("manyview.cli.features", "Features"),
    "run": ("manyview.cli.run", "Run"),
    "index": ("manyview.cli.index", "Index"),
    "query": ("manyview.cli.query", "Query"),
}


def _commands(names=None) -> dict[str, Any]:
    import importlib

    return {name: getattr(importlib.import_module(module), cls)
            for name, (module, cls) in _COMMANDS.items() if names is None or name in names}


def _parse(args: list[str]):
    # A named command is parsed alone: importing every command's module (torch, scipy, OpenCV, ...) costs seconds.
    # Without one (``manyview``, ``manyview --help``, a typo) all of them are offered.
    name = args[0] if args and args[0] in _COMMANDS else None
    if name is not None:
        return tyro.cli(_commands({name})[name], args=args[1:], prog=f"manyview {name}",
                        description=_DESCRIPTIONS.get(name))
    commands = _commands()
    choices = tuple(Annotated[Any, tyro.conf.subcommand(name=name, constructor=command,
                                                        description=_DESCRIPTIONS.get(name))]
                    for name, command in commands.items())
    return tyro.cli(
        Union[choices],  # type: ignore[valid-type]
        args=args, prog="manyview",
        description="Multi-view 3D vision: reconstruction, novel view synthesis, features, Gaussian splatting.",
    )


def _preset_as_subcommand(args: list[str]) -> list[str]:
    """``train MODEL --preset NAME ...`` -> ``train MODEL NAME ...`` (presets are tyro subcommands). A model with a
    single preset has no preset subcommand: naming that preset (as an option or positionally) is dropped."""
    if len(args) < 2 or args[0] != "train":
        return args
    from manyview.cli.train import single_preset

    only = single_preset(args[1])
    if only is not None:
        named = {"--preset", f"--preset={only}"}
        kept = [a for i, a in enumerate(args)
                if not (a in named or (a == only and (i == 2 or args[i - 1] == "--preset")))]
        return kept
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            return args[:2] + [args[i + 1]] + args[2:i] + args[i + 2:]
        if arg.startswith("--preset="):
            return args[:2] + [arg.split("=", 1)[1]] + args[2:i] + args[i + 1:]
    return args


def _option_as_typed(name: str, args: list[str]) -> str:
    """The option the user typed for the setting ``name`` (``--iterations``, ``--train.steps``), else ``name``."""
    if name.startswith("-"):
        return name
    wanted = {name, name.replace("_", "-")}
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            if option[2:] in wanted or option.rsplit(".", 1)[-1] in wanted:
                return option
    return name


def _message(error: ManyviewError, args: list[str]) -> str:
    if isinstance(error, InvalidValue):
        return error.named(_option_as_typed(error.name, args))
    return str(error)


def main(argv: list[str] | None = None) -> int:
    from manyview.progress import end_bars

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = _preset_as_subcommand([a for a in args if a != "--debug"])
    command = None
    try:
        command = _parse(args)
        command.run()
    except SystemExit as stop:
        if stop.code == 0 and ("--help" in args or "-h" in args):
            print(DEBUG_NOTE)  # under every command's help
        raise
    except ManyviewError as error:
        end_bars()
        if debug:
            raise
        print(f"manyview: error: {_message(error, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        end_bars()
        if debug:
            raise
        kept = getattr(command, "interrupted", None)
        print(f"manyview: interrupted; {kept() if kept else 'nothing was written'}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence for a command-line tool
        end_bars()
        if debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"manyview: internal error: {type(error).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
