"""Writing files so that nothing half-written ever looks complete: a temporary path, then a rename."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a .jsonl (or .jsonl.gz) file; a line that is not
    JSON, or nests too deep to read, is a QlcodeError naming the file and the line."""
    from qlcode.errors import QlcodeError

    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise QlcodeError(f"{path}:{n}: not JSON ({e})") from None
            except RecursionError:
                raise QlcodeError(f"{path}:{n}: JSON nested too deep to read") from None
            yield n, value


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from a file, or a QlcodeError naming the file, the line and `fix`."""
    from qlcode.errors import QlcodeError

    if not path.is_file():
        raise QlcodeError(f"{path.parent}: no {path.name}; {fix}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise QlcodeError(f"{path}: not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as e:
        raise QlcodeError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {fix}") from None
    if not isinstance(value, dict):
        raise QlcodeError(f"{path}: a JSON object is expected, not {type(value).__name__}; {fix}")
    return value


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_files_into(src: Path, dest: Path, last: str) -> None:
    """Move every file of `src` into `dest`, `last` at the end, then remove `src`.

    Readers treat `last` as the mark of a complete set: until it lands, the set looks unfinished.
    """
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.iterdir())
    for name in [n for n in names if n != last] + [last]:
        os.replace(src / name, dest / name)
    shutil.rmtree(src)
