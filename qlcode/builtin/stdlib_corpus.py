"""The Python standard library's own source: real, PSF-licensed code present on every machine.

Its modules are the corpus of the micro model's tokenizer and of builtin:stdlib-python-instruct;
the micro model's pretraining also reads CPython's test suite (Lib/test and the packages' tests),
where the interpreter ships it: 29.8M characters in all here, against 11.4M for the modules alone.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

from qlcode.builtin import HELD_OUT_MODULES

TEST_PARTS = {"test", "tests", "idle_test"}
SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_held_out(module: str) -> bool:
    """A held-out module, or a test of one (test.test_json.test_decode tests json)."""
    top, *rest = module.split(".")
    if top == "test" and rest:
        tested = rest[0].removeprefix("test_")
        return any(tested == m or tested.startswith(m + "_") for m in HELD_OUT_MODULES)
    return top in HELD_OUT_MODULES


def iter_sources(held_out: bool | None = None, tests: bool = False) -> Iterator[tuple[str, str]]:
    """(module, source) for each stdlib file, sorted; held_out=None yields all, else that side only.

    tests=True adds the test suite's files (those testing held-out modules count as held out).
    """
    root = stdlib_root()
    skip = SKIP_PARTS if tests else SKIP_PARTS | TEST_PARTS
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        module = module_name(path, root)
        if held_out is not None and is_held_out(module) != held_out:
            continue
        try:
            yield module, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
