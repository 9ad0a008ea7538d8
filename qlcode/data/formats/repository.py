"""repository: a directory of projects (or builtin:stdlib-packages), one text per project.

Each project's Python files in import order (see qlcode.data.repository); with packing, cut into
max_length pieces. Loaded from a directory, not from rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlcode.data.formats.text import Text

if TYPE_CHECKING:
    from datasets import Dataset

    from qlcode.recipe import DatasetSpec


class Repository(Text):
    name = "repository"
    short = "a directory of projects"
    summary = "a directory with one subdirectory per project, or builtin:stdlib-packages"

    def load(self, spec: DatasetSpec, split: str, key: str, seed: int, limit: int | None = None) -> tuple[Dataset, list[int] | None]:
        from qlcode.data.repository import repository_dataset

        ds = repository_dataset(spec.source, key)
        n = min(x for x in (spec.max_rows, limit, len(ds)) if x is not None)
        return ds.select(range(n)), None
