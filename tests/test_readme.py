"""The README's two set-up commands are the project's contract; keep CI and the README saying the same thing."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "manyview" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci_lines


def _readme_command_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line for line in text.splitlines() if line.startswith("| `manyview ")]


def test_every_option_the_readme_shows_exists(capsys):
    """The README's command table is what users type: each of its options must be in that command's --help."""
    import re

    import pytest

    from manyview.cli.main import main

    rows = _readme_command_rows()
    assert len(rows) >= 8
    for row in rows:
        usage = row.split("`")[1]
        words = usage.split()
        command = [words[1]]
        if command == ["train"]:
            command += ["fast3r", "tiny"]  # each model's presets share these options
        if command == ["eval"]:
            command += [words[2]]  # the evaluation the row names (reconstruction, features, repository, ...)
        with pytest.raises(SystemExit):
            main(command + ["--help"])
        help_text = capsys.readouterr().out
        for option in sorted(set(re.findall(r"--[a-z][a-z0-9-]*", usage)) - {"--preset"}):  # --preset: cli.main
            assert option in help_text, (usage, option)
