"""Where rows come from: builtin datasets, local files, or the Hugging Face Hub.

JSON Lines files are read here rather than by `datasets` so that a broken line is reported with
its file and line number.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from datasets import Dataset, load_dataset

from qlcode import builtin
from qlcode.errors import DataError
from qlcode.recipe import DatasetSpec


def _read_jsonl(path: Path, split: str | None = None) -> Dataset:
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); each line of a .jsonl file is one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: each line of a .jsonl file must be a JSON object, got {type(row).__name__}")
            if split is None or row.get("split") == split:
                rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows" + (f" in split {split!r}" if split else ""))
    return Dataset.from_list(rows)


def load_source(spec: DatasetSpec, split: str, key: str) -> Dataset:
    """The rows of one split of one dataset; `key` names the recipe entry in messages."""
    source = spec.source
    if source.startswith("builtin:"):
        path = builtin.dataset_path(source)
        if split not in ("train", "test"):
            raise DataError(f"{key}: {source} has the splits train and test, not {split!r}")
        return _read_jsonl(path, split=split).remove_columns("split")
    if source.endswith((".jsonl", ".json", ".parquet", ".csv")):
        if split != "train":
            raise DataError(f"{key}: a local file holds one split (train), not {split!r}; use data.validation: 0.05 to hold rows out")
        path = Path(source)
        if not path.is_file():  # checked here, not in the recipe: such a file may be made by a step before training
            raise DataError(f"{key}.source: no such file {source!r} (paths are relative to the current directory)")
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        builder = {".json": "json", ".parquet": "parquet", ".csv": "csv"}[path.suffix]
        try:
            return load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # datasets raises many types for unreadable files
            raise DataError(f"{path}: cannot read as {builder}: {e}") from None
    try:
        return load_dataset(source, spec.subset, split=split)
    except FileNotFoundError:
        raise DataError(f"{key}: dataset {source!r} not found on the Hub (check the id, or log in for a private one)") from None
    except ValueError as e:
        raise DataError(f"{key}: {source}: {e}") from None
    except ConnectionError as e:
        raise DataError(f"{key}: cannot reach the Hub for {source!r} ({e}); set HF_HUB_OFFLINE=1 to use the local cache") from None
