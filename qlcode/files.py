"""Writing files so that nothing half-written ever looks complete: a temporary path, then a rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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
