"""The package's import graph, read from the source (module-level and function-level imports;
``if TYPE_CHECKING:`` blocks are not run and do not count): no circles, and the library layers
neither draw nor print — figures and reports belong to ``crbnet.reporting`` and the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import crbnet

ROOT = Path(crbnet.__file__).parent
LIBRARY = ("physics", "stats", "learning", "estimators", "assessment", "imaging", "design")
#: What a library module must not import (drawing, terminal output, the layers above it).
DRAWING = ("crbnet.plots", "crbnet.reporting", "crbnet.cli", "matplotlib", "tqdm")
#: Modules another piece of work is moving their figure and progress bars out of; remove an
#: entry once that work is merged (the test fails while an entry is no longer needed).
PENDING: dict[str, str] = {}
#: Circles allowed for now (none).
KNOWN_CYCLES: list[list[str]] = []


def graph(architecture) -> dict[str, set[str]]:
    """Imports that run (crbnet's own and other packages'), by the reader of
    tools/architecture.py."""
    return architecture.import_graph(run_time_only=True, external=True)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root] & edges.keys())))]
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
                    work.append((child, iter(sorted(edges[child] & edges.keys()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_planted_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path, architecture):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x_typing\n"
                      "def f():\n    from crbnet.plots import y\n    import x_late\n")
    found = architecture.imports(source, "crbnet.m", {"crbnet.plots"}, run_time_only=True,
                                 external=True)
    assert {"crbnet.plots", "x_late"} <= found and "x_typing" not in found


def test_the_import_graph_has_no_circles(architecture):
    found = cycles(graph(architecture))
    assert [c for c in found if c not in KNOWN_CYCLES] == []
    assert [c for c in KNOWN_CYCLES if c not in found] == [], "gone: remove from KNOWN_CYCLES"


def _library(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[1] in LIBRARY


def _outputs(path: Path) -> list[str]:
    """print() calls and uses of sys.stdout / sys.stderr in a module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "print":
            found.append(f"print() at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append(f"sys.{node.attr} at line {node.lineno}")
    return found


def library_violations(architecture) -> dict[str, list[str]]:
    mods = architecture.modules()
    edges = graph(architecture)
    out: dict[str, list[str]] = {}
    for name in filter(_library, mods):
        bad = [f"imports {m}" for m in sorted(edges[name])
               if any(m == d or m.startswith(d + ".") for d in DRAWING)]
        bad += _outputs(mods[name])
        if bad:
            out[name] = bad
    return out


def test_library_modules_neither_draw_nor_print(architecture):
    violations = library_violations(architecture)
    unexpected = {m: v for m, v in violations.items() if m not in PENDING}
    assert unexpected == {}, "library modules that draw or print (move it to crbnet.reporting)"
    settled = sorted(set(PENDING) - set(violations))
    assert settled == [], f"no longer drawing or printing: remove from PENDING: {settled}"


def test_the_library_layers_exist_as_named(architecture):
    assert all((ROOT / layer / "__init__.py").is_file() for layer in LIBRARY)
    assert any(name.startswith("crbnet.reporting.") for name in architecture.modules())
