"""The ``manyview`` command: subcommands generated from config dataclasses (tyro).

Each subcommand lives in its own module as a dataclass with a ``run()`` method; the dataclass is the whole
interface, so ``manyview synth --help`` documents exactly the fields a Python user would set. This module only
dispatches and turns errors into one line: ``ManyviewError`` (bad input) exits 2, anything else exits 1, and
``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys

import tyro

from manyview.errors import ManyviewError


def _commands() -> dict[str, type]:
    from manyview.cli.eval import Eval
    from manyview.cli.info import Info
    from manyview.cli.nvs import NVS
    from manyview.cli.reconstruct import Reconstruct
    from manyview.cli.render import Render
    from manyview.cli.splat import Splat
    from manyview.cli.synth import Synth
    from manyview.cli.train import Train

    return {
        "synth": Synth,
        "info": Info,
        "reconstruct": Reconstruct,
        "nvs": NVS,
        "train": Train,
        "eval": Eval,
        "splat": Splat,
        "render": Render,
    }


def _preset_as_subcommand(args: list[str]) -> list[str]:
    """``train MODEL --preset NAME ...`` -> ``train MODEL NAME ...`` (presets are tyro subcommands)."""
    if len(args) < 2 or args[0] != "train":
        return args
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            return args[:2] + [args[i + 1]] + args[2:i] + args[i + 2:]
        if arg.startswith("--preset="):
            return args[:2] + [arg.split("=", 1)[1]] + args[2:i] + args[i + 1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = _preset_as_subcommand([a for a in args if a != "--debug"])
    try:
        command = tyro.extras.subcommand_cli_from_dict(
            _commands(), args=args, prog="manyview",
            description="Multi-view 3D vision: reconstruction, novel view synthesis, features, Gaussian splatting. "
                        "Add --debug to any command for full tracebacks.",
        )
        command.run()
    except ManyviewError as error:
        if debug:
            raise
        print(f"manyview: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("manyview: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence for a command-line tool
        if debug:
            raise
        print(f"manyview: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
