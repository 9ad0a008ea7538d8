"""What every row format is: its fields, its check, how it renders, and the code it carries.

A format turns a dataset's columns into canonical fields (renamed with a recipe's `columns:`),
checks each row, and renders it, per template, into one of TRL's row kinds. Its `code` is what
infilling splits, and its `contamination_text` what decontamination compares with benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from qlcode.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from qlcode.families import Family
    from qlcode.recipe import DatasetSpec

TEMPLATES = ("instruct", "completion", "raw")
ROLES = {"system", "user", "assistant"}

# TRL's row kinds (the columns its trainers read)
CONVERSATION = "conversation (messages)"
PROMPT_COMPLETION = "prompt-completion"
TEXT = "text"
PREFERENCE = "preference (prompt, chosen, rejected)"
UNPAIRED = "unpaired preference (prompt, completion, label)"
PROMPT_ONLY = "prompt-only (prompt and test columns)"


def row_text(value) -> str:
    """Every string in a value, conversations included."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(row_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(row_text(v) for v in value)
    return ""


def check_messages(value, where: str, need_assistant: bool = True) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be {{role: system|user|assistant, content: text}}, got {m!r}")
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        raise DataError(f"{where}: a conversation needs at least one assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


class DataFormat:
    """One row format; subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]]
    optional: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str]  # its fields, for messages and the README
    short: ClassVar[str]  # what it holds, in messages

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional

    def kind(self, template: str) -> str:
        """The TRL row kind `render` yields under this template."""
        raise NotImplementedError

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        """The row's canonical fields, checked; `column` names each field's source column for messages."""
        for f in self.required:
            text_field(row, f, where, column)
        return {**row, **{f: row.get(f) or "" for f in self.optional}}

    def render(self, row: dict, template: str) -> dict:
        raise NotImplementedError

    def code(self, row: dict) -> str:
        """The code infilling splits ('' = none); `row` is canonical."""
        return ""

    def contamination_text(self, row: dict) -> str:
        """What decontamination compares with the benchmarks: by default every string of the row."""
        return row_text({f: row.get(f) for f in self.fields})

    def teaches(self, row: dict) -> bool:
        """Whether a canonical row can teach anything; rows that cannot are dropped with a count (see `useless`)."""
        return True

    useless: ClassVar[str | None] = None  # what a row that cannot teach holds, in messages; None = every row can

    def template_problem(self, template: str) -> str | None:
        """Why this format cannot render under the template, or None."""
        return None

    def load(self, spec: DatasetSpec, split: str, key: str, seed: int, limit: int | None = None,
             family: Family | None = None) -> tuple[Dataset, list[int] | None]:
        """One split's rows: a seeded sample of max_rows, or the first `limit`; with their source row numbers if cut.
        `family` (the base's) is for formats whose rows the loader lays out itself (repository)."""
        import numpy as np

        from qlcode.data.sources import load_source

        ds = load_source(spec, split, key, limit, prepare=lambda row: self.local_row(row, spec.columns))
        if limit is None and spec.max_rows is not None and split == spec.split:
            rows = np.random.default_rng(seed).permutation(len(ds))[: spec.max_rows].tolist()  # as Dataset.shuffle(seed)
            return ds.select(rows), rows
        return ds, None

    def local_row(self, row: dict, columns: dict[str, str]) -> dict:
        """A local JSON row before it becomes an Arrow table, where each column holds one type in every row:
        a format whose field may take two shapes gives it one here (unchanged by default)."""
        return row

    def for_method(self, ds: Dataset, key: str, source: str, unpaired: bool) -> Dataset:
        """Rendered rows as the recipe's method trains them; `unpaired` for KTO (all formats but preference: as they are)."""
        return ds

    def check_columns(self, present: set[str], key: str, source: str, column: dict[str, str], columns: list[str]) -> None:
        for field in self.required:
            if field not in present:
                raise DataError(
                    f"{key}: {source} has no column {column[field]!r} for {self.name} field {field!r} "
                    f"(columns: {', '.join(columns)}); map one with {key}.columns: {{{field}: COLUMN}}"
                )

    def check_dataset(self, ds: Dataset, key: str, source: str) -> None:
        """A check over the loaded rows before renaming (none by default)."""

    def canonical(self, ds: Dataset, columns: dict[str, str], key: str, source: str, template: str,
                  rows: list[int] | None = None) -> Dataset:
        """Rows with exactly the format's fields and `_row` (the source row number); a bad row is a DataError."""
        unknown = set(columns) - set(self.fields)
        if unknown:
            raise DataError(f"{key}.columns: {', '.join(sorted(unknown))} is not a field of {self.name} rows "
                            f"(fields: {self.summary})")
        column = {f: columns.get(f, f) for f in self.fields}
        present = {f: c for f, c in column.items() if c in ds.column_names}
        self.check_columns(set(present), key, source, column, ds.column_names)
        self.check_dataset(ds, key, source)

        def convert(row: dict, idx: int) -> dict:
            n = rows[idx] if rows is not None else idx
            out = self.check({f: row[c] for f, c in present.items()}, f"{source} row {n}", column, template)
            return {**out, "_row": n}

        return ds.map(convert, with_indices=True, remove_columns=ds.column_names, desc=f"Checking {source}")


def text_field(row: dict, f: str, where: str, column: dict[str, str]) -> str:
    value = row.get(f)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {f} ({column[f]!r}) must be non-empty text, got {value!r}")
    return value
