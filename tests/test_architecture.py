"""The architecture as docs/architecture.md states it, checked on the source: the library packages import
neither Hydra nor the command-line edge, their import graph (function-level imports included) has no
cycle, the core imports no other package of fewstep, and no file outgrows its room."""
import ast
from pathlib import Path

import pytest

from helpers import ROOT

LIBRARY = ("samplers", "pipelines", "tuning", "flows", "gan", "training", "evaluation", "suites")
# what each package may import of fewstep (the arrows of docs/architecture.md)
ALLOWED = {"samplers": {"assets"}, "pipelines": {"samplers", "tuning", "assets"},
           "tuning": {"samplers", "evaluation", "assets"}, "evaluation": {"samplers", "assets"},
           "flows": {"samplers"}, "training": set(), "gan": {"samplers", "flows", "evaluation", "training", "assets"},
           "suites": {"samplers", "pipelines", "tuning", "flows", "gan", "training", "evaluation", "assets"}}


def modules():
    """{module name: path} of the library packages (fewstep.<package>.<module>)."""
    found = {}
    for package in LIBRARY:
        for path in sorted((ROOT / package).glob("*.py")) if (ROOT / package).is_dir() else []:
            name = f"fewstep.{package}" + ("" if path.stem == "__init__" else f".{path.stem}")
            found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, as absolute names."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    seen = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            seen.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            seen.add(base)
            seen.update(f"{base}.{alias.name}" for alias in node.names)
    return seen


GRAPH = {name: imports(name, path) for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_a_library_module_imports_no_hydra_omegaconf_cli_or_scripts(name):
    bad = sorted(m for m in GRAPH[name] if m.split(".")[0] in ("hydra", "omegaconf")
                 or m.startswith(("fewstep.cli", "fewstep.scripts")))
    assert not bad, f"{name} imports {', '.join(bad)}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_a_package_imports_only_the_packages_below_it(name):
    package = name.split(".")[1]
    others = {m.split(".")[1] for m in GRAPH[name] if m.startswith("fewstep.") and m.count(".") >= 1}
    assert others - {package} <= ALLOWED[package], f"{name} imports {sorted(others - {package} - ALLOWED[package])}"


def test_the_library_has_no_import_cycle():
    edges = {name: {m for m in targets if m in GRAPH and m != name} for name, targets in GRAPH.items()}
    for name in edges:  # a package's __init__ re-exports its modules: an edge into the package is one into them
        edges[name] = {m for m in edges[name] if not (m == name.rsplit(".", 1)[0])}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("path", sorted(p for p in ROOT.glob("*/*.py") if p.parts[-2] in (*LIBRARY, "cli", "scripts")),
                         ids=lambda p: f"{p.parts[-2]}/{p.name}")
def test_no_file_is_over_500_lines_and_a_script_is_a_thin_shell(path):
    lines = len(path.read_text().splitlines())
    limit = 150 if path.parts[-2] == "scripts" else 500
    assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines (at most {limit})"
