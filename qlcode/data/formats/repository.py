"""repository: a directory of projects (or builtin:stdlib-packages), one text per project.

Each project's Python files in import order, laid out as the base's family was trained (see
qlcode.data.repository); with packing, cut into max_length pieces. Loaded from a directory, not from rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlcode.data.formats.text import Text

if TYPE_CHECKING:
    from datasets import Dataset

    from qlcode.families import Family
    from qlcode.recipe import DatasetSpec


class Repository(Text):
    name = "repository"
    short = "a directory of projects"
    summary = "a directory with one subdirectory per project, or builtin:stdlib-packages"

    def load(self, spec: DatasetSpec, split: str, key: str, seed: int, limit: int | None = None,
             family: Family | None = None) -> tuple[Dataset, list[int] | None]:
        from qlcode.data.repository import repository_dataset
        from qlcode.families import DEFAULT

        ds = repository_dataset(spec.source, key, family or DEFAULT)
        n = min(x for x in (spec.max_rows, limit, len(ds)) if x is not None)
        return ds.select(range(n)), None
