"""The Python standard library's own source: real, PSF-licensed code present on every machine.

It is the corpus of the micro model's tokenizer and of builtin:stdlib-python-instruct.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

from qlcode.builtin import HELD_OUT_MODULES

SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_held_out(module: str) -> bool:
    return module.split(".")[0] in HELD_OUT_MODULES


def iter_sources(held_out: bool | None = None) -> Iterator[tuple[str, str]]:
    """(module, source) for each stdlib file, sorted; held_out=None yields all, else that side only."""
    root = stdlib_root()
    for path in sorted(root.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        module = module_name(path, root)
        if held_out is not None and is_held_out(module) != held_out:
            continue
        try:
            yield module, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
