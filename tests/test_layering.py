"""The package layering of docs/ARCHITECTURE.md, read off the source: which package may import which.

Every module under ``src/manyview`` is parsed (nothing is imported), and every ``import manyview...`` /
``from manyview... import`` in it becomes an edge, including the imports inside functions (deferred imports are
still dependencies). Then:

- only ``cli`` imports ``train`` (the benchmarks, outside ``src``, may too), and nothing imports ``cli`` but ``cli``;
- a package imports only its own modules and packages of lower layers (:data:`LAYERS`, bottom first; packages of
  one layer do not import each other);
- no two modules import each other, directly or around a circle, at import time (module level).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "manyview"

# Bottom first. A package may import its own modules and any package of a lower layer; packages that share a layer
# are independent of each other.
LAYERS: list[set[str]] = [
    {"errors"},  # the one error users see
    {"progress", "profiling", "device", "assets"},  # progress bar, timing / memory meters, device choice, bundled weights
    {"geometry"},  # functional camera math on tensors
    {"scene"},  # the data model (Cameras, Views, PointCloud, Reconstruction, resize-and-crop)
    {"io"},  # files <-> scene types
    {"synth"},  # procedural scenes with exact ground truth, held-out seeds, ground-truth samples
    {"hub"},  # weights files in and out (safe loading, strict keys), for every model and metric network
    {"nn", "metrics"},  # network blocks; pose / geometry / image metrics
    {"models"},  # one module per network
    {"recon", "nvs", "splat", "features"},  # pipelines from network outputs to results; 2D / 3D feature networks
    {"viewer", "repository"},  # the web viewer of any output or dataset; the searchable repository of scenes
    {"pipeline"},  # photos -> poses -> splat -> evaluation -> orbit -> report, resumable (manyview run)
    {"train"},  # the trainer and one task per model
    {"cli"},  # thin commands
    {"__main__"},  # python -m manyview (torchrun -m manyview ...): the command, nothing more
]
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, e.g. manyview.recon.evaluate
    target: str  # imported module, e.g. manyview.synth.samples
    line: int
    module_level: bool  # executed at import time (not inside a function, not under TYPE_CHECKING)

    def __str__(self) -> str:
        where = "" if self.module_level else " (inside a function)"
        return f"{self.source} -> {self.target} (line {self.line}){where}"


def module_name(path: Path) -> str:
    parts = ("manyview",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def package_of(module: str) -> str | None:
    """``manyview.recon.evaluate`` -> ``recon``; ``manyview.errors`` -> ``errors``; the root package -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (``manyview.scene.Cameras`` -> ``manyview.scene``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: str | None = None, is_package: bool | None = None) -> list[Edge]:
    """The manyview imports of ``module`` (its file, or ``source`` when given)."""
    path = MODULES.get(module)
    is_package = path is not None and path.name == "__init__.py" if is_package is None else is_package
    source = path.read_text(encoding="utf-8") if source is None else source
    edges: list[Edge] = []

    def add(name: str, line: int, module_level: bool) -> None:
        if name == "manyview" or name.startswith("manyview."):
            edges.append(Edge(module, _resolve(name), line, module_level))

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module_level)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, module_level)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: from the module's own package upwards
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                for alias in child.names:  # `from pkg import sub` imports the submodule pkg.sub when there is one
                    add(f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix, child.lineno,
                        module_level)
            else:
                visit(child, module_level)

    visit(ast.parse(source, filename=str(path or module)), True)
    return edges


EDGES: list[Edge] = [e for m in MODULES for e in imports_of(m)]


def _cross_package(edges: list[Edge]) -> list[tuple[str, str, Edge]]:
    out = []
    for e in edges:
        src, dst = package_of(e.source), package_of(e.target)
        if src is not None and dst is not None and src != dst:
            out.append((src, dst, e))
    return out


# --------------------------------------------------------------------------------------------- the checks
def test_the_parser_sees_the_imports_it_must():
    """The graph is not empty by accident: known imports, deferred ones included, are edges."""
    assert "manyview.scene.cameras" in MODULES and "manyview.cli.main" in MODULES
    found = {(e.source, e.target) for e in EDGES}
    assert ("manyview.scene.cameras", "manyview.geometry.transforms") in found
    deferred = [e for e in EDGES if not e.module_level and e.source.startswith("manyview.cli.")]
    assert deferred, "cli imports the library inside run(): those imports must be seen"
    # `from manyview.synth import shapes` is the module manyview.synth.shapes, not the package
    assert ("manyview.synth.render", "manyview.synth.shapes") in found


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in MODULES} - {None}
    unknown = sorted(packages - set(LAYER))
    assert not unknown, (f"packages {unknown} are in no layer: add each to LAYERS in tests/test_layering.py and to "
                         "the layout table of docs/ARCHITECTURE.md")


def train_importers(edges: list[Edge]) -> list[str]:
    return [str(e) for src, dst, e in _cross_package(edges) if dst == "train" and src != "cli"]


def cli_importers(edges: list[Edge]) -> list[str]:
    return [str(e) for src, dst, e in _cross_package(edges) if dst == "cli" and src != "__main__"]


def layer_violations(edges: list[Edge]) -> list[str]:
    bad = []
    for src, dst, e in _cross_package(edges):
        if src in LAYER and dst in LAYER and LAYER[dst] >= LAYER[src]:
            same = " (same layer)" if LAYER[dst] == LAYER[src] else ""
            bad.append(f"{src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]}){same}: {e}")
    return bad


def test_only_cli_imports_train():
    bad = train_importers(EDGES)
    assert not bad, "only cli (and bench/) may import train:\n" + "\n".join(bad)


def test_nothing_below_cli_imports_cli():
    bad = cli_importers(EDGES)
    assert not bad, "cli is the top layer; nothing imports it:\n" + "\n".join(bad)


def test_packages_import_only_lower_layers():
    bad = layer_violations(EDGES)
    assert not bad, "imports against the layer order of docs/ARCHITECTURE.md:\n" + "\n".join(bad)


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        if e.module_level and e.target != "manyview" and e.target != e.source:
            graph[e.source].add(e.target)
    cycles = _strongly_connected(graph)
    assert not cycles, "modules importing each other at import time:\n" + "\n".join(
        " <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [{"a", "b"}, {"c", "d"}]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert sorted(map(sorted, _strongly_connected(graph))) == sorted(map(sorted, expected))


def test_the_checks_catch_what_they_are_named_after():
    """Deferred, relative and TYPE_CHECKING imports are parsed as they should be, and each check reports them."""
    source = """
from typing import TYPE_CHECKING
from manyview.scene import Views
from . import pairs
if TYPE_CHECKING:
    from manyview.cli.main import main

def evaluate():
    from manyview.train.data import StreamConfig
    from manyview.nvs.pipeline import render_views
"""
    edges = imports_of("manyview.recon.fake", source, is_package=False)
    found = {(e.target, e.module_level) for e in edges}
    assert found == {("manyview.scene", True), ("manyview.recon.pairs", True), ("manyview.cli.main", False),
                     ("manyview.train.data", False), ("manyview.nvs.pipeline", False)}
    assert len(train_importers(edges)) == 1 and len(cli_importers(edges)) == 1
    violations = layer_violations(edges)  # upwards to cli and train, sideways to nvs; not down to scene
    assert [v.split(" (layer")[1].split("imports ")[1] for v in violations] == ["cli", "train", "nvs"]
    assert violations[2].split(":")[0].endswith("(same layer)")
