"""The package layout shows the data flow: few modules at the top, stage folders below, and no import cycle.

The import graph is read from the source with ``ast``; it counts every import,
at module level, inside functions and under ``TYPE_CHECKING`` alike, so a
cycle hidden behind a lazy or type-only import is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mub", "mub_dataset", "mub_metric", "builders")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports, as import-linter's graph (grimp) counts them.

    ``from a.b import c`` is an edge to the module ``a.b.c`` when there is one,
    else to ``a.b``; the packages above the target are not edges of their own.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
    return {target for target in targets if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None; iterative DFS with colours."""
    colour = {name: 0 for name in graph}  # 0 unseen, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_find_cycle_sees_a_type_checking_cycle(tmp_path):
    # The checker itself must catch a cycle that exists only under TYPE_CHECKING.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("from pkg.a import A\n")
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py"}
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "a.py").write_text("")
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None


def test_relative_imports_resolve_against_the_package(tmp_path):
    package = tmp_path / "pkg" / "sub"
    package.mkdir(parents=True)
    for path in (tmp_path / "pkg" / "__init__.py", package / "__init__.py", tmp_path / "pkg" / "top.py"):
        path.write_text("")
    (package / "leaf.py").write_text("from ..top import x\nfrom . import sibling\n")
    (package / "sibling.py").write_text("")
    modules = {
        "pkg": tmp_path / "pkg" / "__init__.py",
        "pkg.top": tmp_path / "pkg" / "top.py",
        "pkg.sub": package / "__init__.py",
        "pkg.sub.leaf": package / "leaf.py",
        "pkg.sub.sibling": package / "sibling.py",
    }
    assert imported_modules(package / "leaf.py", "pkg.sub.leaf", modules) == {"pkg.top", "pkg.sub.sibling"}


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    assert "mub.runs.runner" in graph and "mub.config" in graph["mub.runs.runner"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_at_most_six_modules_sit_directly_in_mub():
    top = sorted(path.name for path in (ROOT / "mub").glob("*.py"))
    assert len(top) <= 6, top
    stages = {path.name for path in (ROOT / "mub").iterdir() if (path / "__init__.py").is_file()}
    assert {"protocol", "backends", "runs", "report", "extend", "testing"} <= stages


@pytest.mark.parametrize(
    "forbidden",
    ["torch", "transformers", "datasets", "PIL", "numpy", "mub.runs.runner"],
)
def test_cli_help_imports_nothing_heavy(forbidden):
    code = (
        "import sys\nfrom mub import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print({forbidden!r} in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_public_api_is_unchanged():
    import mub
    from mub.config import RunConfig
    from mub.runs.runner import run

    assert mub.RunConfig is RunConfig and mub.run is run
    # importing the runs package must not shadow the `run` function
    import mub.runs.runner  # noqa: F401

    assert mub.run is run
