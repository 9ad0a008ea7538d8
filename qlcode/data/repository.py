"""Repository-level sequences for long-context fine-tuning (Code Llama section 2.4).

A repository becomes one text: its Python files ordered so that a file comes after the files of
the same repository it imports (found with `ast`; cycles fall back to path order), laid out as the
base's family was trained (`Infilling.repository`: Qwen2.5-Coder's and StarCoder2's repository
tokens, else a `# file: PATH` header per file). With packing, the text is cut into consecutive
max_length pieces, so a 16k-token sequence holds a stretch of one project in dependency order.
"""

from __future__ import annotations

import ast
from pathlib import Path

from datasets import Dataset

from qlcode.builtin import HELD_OUT_MODULES
from qlcode.builtin.stdlib_corpus import SKIP_PARTS, stdlib_root
from qlcode.errors import DataError
from qlcode.families import DEFAULT, Family


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: max(0, len(package.split(".")) - node.level + 1)] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_order(root: Path) -> list[Path]:
    """The .py files under root, each after the files it imports from the same tree.

    A depth-first walk in path order; an import that closes a cycle is ignored.
    """
    files = sorted(p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts))
    # a module is named from the repository root (pkg.mod) or, when the root is itself a package, from its parent
    by_module = {_module(p, base): p for base in (root.parent, root) for p in files}
    deps = {}
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        names = _imports(text, _module(p, root.parent)) | _imports(text, _module(p, root))
        deps[p] = sorted({by_module[m] for m in names if m in by_module} - {p})
    order: list[Path] = []
    state: dict[Path, int] = {}  # 1 = on the current path, 2 = placed

    def visit(p: Path) -> None:
        if p in state:
            return
        state[p] = 1
        for d in deps[p]:
            visit(d)
        state[p] = 2
        order.append(p)

    for p in files:
        visit(p)
    return order


def repository_text(root: Path, family: Family = DEFAULT) -> str:
    """The repository at `root` (named by its directory) in `family`'s layout, paths relative to `root`."""
    files = [(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8", errors="replace")) for p in import_order(root)]
    return family.infilling.repository(root.name, files)


def stdlib_packages() -> list[Path]:
    """The standard library's packages (email, http, json, ...) outside HELD_OUT_MODULES."""
    root = stdlib_root()
    return sorted(p.parent for p in root.glob("*/__init__.py")
                  if p.parent.name not in SKIP_PARTS and p.parent.name not in HELD_OUT_MODULES)


def repository_dataset(source: str, key: str, family: Family = DEFAULT) -> Dataset:
    """One text row per repository in `family`'s layout: each subdirectory of `source`, or builtin:stdlib-packages."""
    if source == "builtin:stdlib-packages":
        roots = stdlib_packages()
    else:
        base = Path(source)
        if not base.is_dir():
            raise DataError(f"{key}.source: repository data is a directory with one subdirectory per repository; {source!r} is not a directory")
        roots = sorted(p for p in base.iterdir() if p.is_dir() and any(p.rglob("*.py")))
    rows = [{"text": repository_text(r, family)} for r in roots]
    if not rows:
        raise DataError(f"{key}.source: {source} holds no repository with Python files")
    return Dataset.from_list(rows)
