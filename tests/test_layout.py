"""The package's shape: imports run one way, no private name crosses packages, the library imports no
UI, and README's Layout table is the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "qlcode"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at any depth, except `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names in _imports(path):
            if not target.startswith("qlcode"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            graph[name] |= set(subs) or ({target} if target in modules else set())
    return graph


def test_the_package_has_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert cycles == []


def test_no_private_name_crosses_packages():
    crossing = []
    for path in PACKAGE.rglob("*.py"):
        here = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
        for target, names in _imports(path):
            if target.startswith("qlcode") and not (target == here or target.startswith(here + ".")):
                crossing += [f"{_module(path)}: {target}.{n}" for n in names if n.startswith("_")]
    assert crossing == []


def test_the_library_imports_no_ui_and_a_recipe_no_trainer():
    code = ("import sys, qlcode, qlcode.cli, qlcode.recipe, qlcode.runs; "
            "print(sorted(m for m in ('gradio', 'trl', 'app') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO / "tests", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_build_scripts_stay_out_of_the_library():
    users = [m for m, targets in _graph().items() if not m.startswith("qlcode.builtin.build")
             and any(t.startswith("qlcode.builtin.build") for t in targets)]
    assert users == []


def test_readme_layout_table_is_the_tree():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = {p.rstrip("/") for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for p in re.findall(r"`([^`]+)`", cell)}
    for place in named:
        assert (REPO / place).exists(), f"README's Layout names {place}, which is not in the tree"
    tops = {f"qlcode/{p.name}" for p in PACKAGE.iterdir() if p.suffix == ".py" and p.name != "__init__.py"
            or p.is_dir() and p.name != "__pycache__"}
    tops |= {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "qlcode"
             and p.name not in ("build", "evals", "data")}
    assert sorted(tops - named) == [], "every module, package and top-level folder has a row in README's Layout"
