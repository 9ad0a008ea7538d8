"""Where rows come from: builtin datasets, local files, or the Hugging Face Hub.

Local files are read here rather than by `datasets`, so that a problem is reported with its file
and line: bytes that are not UTF-8, a line that is not JSON, a CSV row with too many fields, or a
column whose type changes from one row to the next (which pyarrow would refuse deep inside).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, load_dataset

from qlcode import builtin
from qlcode.errors import DataError, QlcodeError
from qlcode.files import TOO_DEEP, jsonl_rows, utf8_text
from qlcode.schema import LOCAL_DATA_SUFFIXES

if TYPE_CHECKING:
    from qlcode.recipe import DatasetSpec

MBPP_TRAIN = "builtin:mbpp-train"
Prepare = Callable[[dict], dict]  # a format's own reshaping of a local row before it becomes a table (DataFormat.local_row)


def _kind(value) -> str | None:
    """A JSON value's type as a user reads it; None for null (allowed anywhere)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _typed(value, path: str):
    """(path, type) for a value and every value nested in it: messages[].content for a message's content."""
    kind = _kind(value)
    if kind is None:
        return
    yield path, kind
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _typed(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            yield from _typed(v, f"{path}[]")


def _table(rows: list[dict], where: list[tuple[str, str]], path: Path) -> Dataset:
    """Rows as a Dataset; a column (or a field nested in one) whose type differs between rows is named with the first such row.

    `where` gives each row's place twice: in full (file:line) and short (line N), for the message.
    """
    first: dict[str, tuple[str, str]] = {}
    for row, (at, short) in zip(rows, where):
        try:
            typed = [t for name, value in row.items() for t in _typed(value, name)]
        except RecursionError:
            raise DataError(f"{at}: {TOO_DEEP}") from None
        for column, kind in typed:
            seen = first.setdefault(column, (kind, short))
            if seen[0] != kind:
                hint = " (quote numbers as text)" if "a number" in (kind, seen[0]) else ""
                raise DataError(f"{at}: column {column!r} holds {kind} here but {seen[0]} in {seen[1]}; "
                                f"give the column one type in every row{hint}")
    try:
        return Dataset.from_list(rows)
    except Exception as e:  # pyarrow refuses what the check above lets through (e.g. an int over 64 bits)
        raise DataError(f"{path}: cannot hold these rows in a table ({e}); give every row the same shape") from None


def _read_jsonl(path: Path, split: str | None = None, limit: int | None = None, prepare: Prepare | None = None) -> Dataset:
    rows, where = [], []
    for n, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: each line of a .jsonl file must be a JSON object, got {type(row).__name__}")
        if split is None or row.get("split") == split:
            rows.append(prepare(row) if prepare else row)
            where.append((f"{path}:{n}", f"line {n}"))
        if limit is not None and len(rows) == limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows" + (f" in split {split!r}" if split else ""))
    return _table(rows, where, path)


def _read_json(path: Path, limit: int | None, prepare: Prepare | None = None) -> Dataset:
    text = utf8_text(path.read_bytes(), path)
    try:
        rows = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: {TOO_DEEP}") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file: read it as JSON Lines
            return _read_jsonl(path, limit=limit, prepare=prepare)
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json file is a list of row objects") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: a .json file must hold a non-empty list of row objects ([{{...}}, {{...}}])")
    rows = [prepare(r) if prepare else r for r in rows[:limit]]
    return _table(rows, [(f"{path} row {i}", f"row {i}") for i in range(len(rows))], path)


def _read_csv(path: Path, limit: int | None) -> Dataset:
    import io

    import pandas as pd

    text = utf8_text(path.read_bytes(), path)
    try:
        frame = pd.read_csv(io.StringIO(text), nrows=limit)
    except pd.errors.ParserError as e:  # "Error tokenizing data. C error: Expected 2 fields in line 3, saw 4"
        detail = str(e).split("C error: ")[-1].strip()
        raise DataError(f"{path}: not a valid CSV file ({detail}); the first line names the columns and each line "
                        "holds one value per column (quote values that contain commas)") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV file; the first line names the columns") from None
    if frame.empty:
        raise DataError(f"{path}: no rows under the CSV header")
    return Dataset.from_pandas(frame, preserve_index=False)


def _read_parquet(path: Path, limit: int | None) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({e})") from None
    return Dataset(table.slice(0, limit) if limit is not None else table)


def not_a_file(path: Path) -> str:
    """Why a data path that is not a regular file cannot be read, in a user's words."""
    if path.is_dir():
        return f"{str(path)!r} is a directory, not a data file (a directory of projects is format: repository)"
    if path.is_symlink() and not path.exists():
        return f"{str(path)!r} is a symbolic link to nothing (its target is missing, or the link leads back to itself)"
    if path.exists():
        return f"{str(path)!r} is not a regular file (a FIFO, socket or device): copy the rows into a file"
    return f"no such file {str(path)!r} (paths are relative to the current directory)"


def read_local(path: Path, limit: int | None = None, prepare: Prepare | None = None) -> Dataset:
    """A local .jsonl, .json, .csv or .parquet file, or its first `limit` rows; `prepare` reshapes JSON rows (a CSV
    cell holds text or a number, and a Parquet file is typed already)."""
    if path.suffix in (".csv", ".parquet"):
        return {".csv": _read_csv, ".parquet": _read_parquet}[path.suffix](path, limit=limit)
    return {".jsonl": _read_jsonl, ".json": _read_json}[path.suffix](path, limit=limit, prepare=prepare)


def _hub(spec: DatasetSpec, split: str, key: str, limit: int | None) -> Dataset:
    source = spec.source
    try:
        if limit is None:
            return load_dataset(source, spec.subset, split=split)
        return Dataset.from_list(list(load_dataset(source, spec.subset, split=split, streaming=True).take(limit)))
    except FileNotFoundError:
        raise DataError(f"{key}: dataset {source!r} not found on the Hub (check the id, or log in for a private one)") from None
    except ValueError as e:
        raise DataError(f"{key}: {source}: {e}") from None
    except ConnectionError as e:
        raise DataError(f"{key}: cannot reach the Hub for {source!r} ({e}); set HF_HUB_OFFLINE=1 to use the local cache") from None


def _mbpp_train(source: str, split: str, key: str) -> Dataset:

    path = source.removeprefix(MBPP_TRAIN).removeprefix(":") or None
    if split != "train":
        raise DataError(f"{key}: {MBPP_TRAIN} is MBPP's train split alone (task_id 601-974), not {split!r}; "
                        "use data.validation: 0.05 to hold rows out")
    if path is not None and not Path(path).is_file():
        raise DataError(f"{key}.source: no such file {path!r} (MBPP's original mbpp.jsonl)")
    try:
        return Dataset.from_list(mbpp_train_rows(path))
    except QlcodeError:  # MBPP from the Hub, unreachable
        raise DataError(f"{key}: cannot load MBPP from the Hub; read a local copy (MBPP's original mbpp.jsonl) "
                        f"with {key}.source: {MBPP_TRAIN}:PATH") from None


def is_hub(source: str) -> bool:
    return not source.startswith("builtin:") and not source.endswith(LOCAL_DATA_SUFFIXES)


def hub_note(source: str, key: str) -> str | None:
    """For a source read from the Hub: a note when the Hub cannot be asked, or a DataError when it has no such dataset.

    None when the source is not on the Hub or the Hub has it.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    repo = "google-research-datasets/mbpp" if source == MBPP_TRAIN else source if is_hub(source) else None
    if repo is None:
        return None
    if constants.HF_HUB_OFFLINE:
        return f"{key}: {source} is on the Hub and HF_HUB_OFFLINE is set: not checked"
    try:
        HfApi().dataset_info(repo, timeout=10)
    except RepositoryNotFoundError:
        raise DataError(f"{key}: dataset {repo!r} not found on the Hub (check the id, or log in for a private one)") from None
    except Exception as e:  # no network: httpx's, OSError and others, by platform
        return f"{key}: {source}: the Hub cannot be reached ({e}): not checked"
    return None


def load_source(spec: DatasetSpec, split: str, key: str, limit: int | None = None, prepare: Prepare | None = None) -> Dataset:
    """The rows of one split of one dataset (its first `limit`, if given); `key` names the recipe entry in messages;
    `prepare` reshapes each row of a local JSON file before the table is made."""
    source = spec.source
    if source == MBPP_TRAIN or source.startswith(MBPP_TRAIN + ":"):
        return _mbpp_train(source, split, key)
    if source.startswith("builtin:"):
        path = builtin.dataset_path(source)
        if split not in ("train", "test"):
            raise DataError(f"{key}: {source} has the splits train and test, not {split!r}")
        return _read_jsonl(path, split=split, limit=limit).remove_columns("split")
    if not is_hub(source):
        if split != "train":
            raise DataError(f"{key}: a local file holds one split (train), not {split!r}; use data.validation: 0.05 to hold rows out")
        path = Path(source)
        if not path.is_file():  # checked here, not in the recipe: such a file may be made by a step before training
            made = f"; make it first with: {spec.made_by}" if spec.made_by else ""
            raise DataError(f"{key}.source: {not_a_file(path)}{made}")
        return read_local(path, limit, prepare)
    return _hub(spec, split, key, limit)


def mbpp_train_rows(path: str | None) -> list[dict]:
    """MBPP's train split (task_id 601-974) as problem rows, prompts as qlcode's evaluation words them."""
    from qlcode.execution.benchmarks import MBPP_TRAIN_IDS, mbpp

    return [{"task_id": p.task_id, "prompt": p.prompt, "test": p.test} for p in mbpp(path, split=MBPP_TRAIN_IDS)]
