"""Write a benchmark's table into bench/README.md, between the markers that name it.

A section of the README is delimited by ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` lines; everything between
them is replaced, the prose around them is kept. A missing section is appended at the end with a heading, so that a
new benchmark's first run still lands in the README. The file is replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from manyview.io.atomic import atomic_open

README = Path(__file__).resolve().parent / "README.md"


def replace_section(text: str, name: str, body: str, heading: str | None = None) -> str:
    """``text`` with the section ``name`` holding ``body`` (appended, under ``heading``, when absent)."""
    begin, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        if end not in rest:
            raise ValueError(f"bench/README.md: {begin} has no closing {end}")
        return head + block + rest.split(end, 1)[1]
    title = f"\n## {heading}\n\n" if heading else "\n"
    return text.rstrip("\n") + "\n" + title + block + "\n"


def write_table(name: str, body: str, heading: str | None = None, readme: Path = README) -> Path:
    """Put ``body`` (Markdown) into the README's section ``name``; returns the README's path."""
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    with atomic_open(readme, "w") as f:
        f.write(replace_section(text, name, body, heading))
    return readme
