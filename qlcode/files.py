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


TOO_DEEP = "values nested too deep to read (lists or objects inside each other hundreds of levels down); a row holds text fields"


def utf8_text(raw: bytes, path: Path, line: int = 1) -> str:
    """Bytes as UTF-8 text; otherwise a DataError naming the line (counted from `line`) and column."""
    from qlcode.errors import DataError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = line + raw.count(b"\n", 0, e.start)
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{at}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a .jsonl (or .jsonl.gz) file; a line that is not
    UTF-8 or not JSON, or nests too deep to read, is a DataError naming the file and the line."""
    from qlcode.errors import DataError

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = utf8_text(raw, path, n)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); each line of a .jsonl file is one JSON object") from None
            except RecursionError:
                raise DataError(f"{path}:{n}: {TOO_DEEP}") from None
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
