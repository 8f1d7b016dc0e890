"""bench/readme_table.py: a benchmark's table replaces its own section of bench/README.md and nothing else."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("readme_table",
                                               Path(__file__).resolve().parents[1] / "bench" / "readme_table.py")
readme_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_table)


def test_a_section_is_replaced_and_the_prose_around_it_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n\n<!-- table:a -->\n| old |\n<!-- /table:a -->\n\nafter a\n")
    readme_table.write_table("a", "| new |\n", readme=readme)
    text = readme.read_text()
    assert "| new |" in text and "| old |" not in text
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("\n\nafter a\n")
    # a second benchmark's first run is appended under its heading; the first section is untouched
    readme_table.write_table("b", "| b |", heading="B bench", readme=readme)
    text = readme.read_text()
    assert text.index("| new |") < text.index("## B bench") < text.index("<!-- table:b -->\n| b |\n<!-- /table:b -->")
    readme_table.write_table("b", "| b2 |", readme=readme)
    assert readme.read_text().count("table:b -->") == 2 and "| b2 |" in readme.read_text()


def test_an_unclosed_section_is_refused_and_the_file_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:a -->\n| old |\n")
    with pytest.raises(ValueError, match="no closing"):
        readme_table.write_table("a", "| new |", readme=readme)
    assert readme.read_text() == "<!-- table:a -->\n| old |\n"
