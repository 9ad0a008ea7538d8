"""Exporting trained adapters: merging into the full-precision base, GGUF files, and Hub pushes."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qlcode.errors import QlcodeError

REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def writing_into(folder: Path) -> Iterator[None]:
    """A folder that refuses our files (permissions, a read-only filesystem) is a one-line error naming --out."""
    try:
        yield
    except OSError as e:
        if e.errno not in REFUSED:
            raise
        raise QlcodeError(f"--out: cannot write in {folder} ({e.strerror}); choose a folder you can write to "
                          "with --out") from None
