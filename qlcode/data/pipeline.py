"""From a recipe's `data:` section to the rows a trainer gets: load, check, render, split,
decontaminate, infill.

`build` is the whole of it, run before anything is written (before the run directory exists), so
bad data stops a run before it starts, and `qlcode data check` sees the rows training would use.
Until `build` returns, rows carry hidden columns: the dataset and source row they came from, and
their format's code (for infilling) and text (for decontamination).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, List, Sequence, concatenate_datasets

from qlcode.data.formats import FORMATS
from qlcode.errors import DataError
from qlcode.families import Family, family_of_tokenizer
from qlcode.recipe import DataSection
from qlcode.schema import LOCAL_DATA_SUFFIXES

HIDDEN = ("_dataset", "_row", "_code", "_text")


def render(row: dict, fmt: str, template: str) -> dict:
    """One canonical row as the TRL row kind of its format under this template (see README: Formats)."""
    return FORMATS[fmt].render(row, template)


def prepared(data: DataSection, i: int, split: str, limit: int | None = None, unpaired: bool = False,
             family: Family | None = None) -> Dataset:
    """One split of data.datasets[i], checked and rendered, in its own row order (its first `limit` rows if given);
    `unpaired`: for a method that trains unpaired rows (KTO, qlcode.methods); `family` is the base's (repository
    rows take its layout; None: Code Llama's)."""
    spec, key = data.datasets[i], f"data.datasets[{i}]"
    fmt = FORMATS[spec.format]
    problem = fmt.template_problem(data.template)
    if problem:
        raise DataError(f"{key}: {problem}")
    ds, rows = fmt.load(spec, split, key, data.seed, limit, family)
    ds = fmt.canonical(ds, spec.columns, key, spec.source, data.template, rows)
    if fmt.useless is not None:
        ds = _teaching(ds, fmt, key, split, spec.source)

    def rendered_row(row: dict) -> dict:
        return {**fmt.render(row, data.template), "_dataset": i, "_row": row["_row"],
                "_code": fmt.code(row), "_text": fmt.contamination_text(row)}

    ds = ds.map(rendered_row, remove_columns=ds.column_names, desc=f"Rendering {spec.source}")
    return fmt.for_method(ds, key, spec.source, unpaired)


def _teaching(ds: Dataset, fmt, key: str, split: str, source: str) -> Dataset:
    """The rows that can teach; the others dropped with a count, or an error when none is left."""
    from qlcode.progress import console

    useless = [r["_row"] for r in ds if not fmt.teaches(r)]
    if len(useless) == len(ds):
        raise DataError(f"{key}: in every one of the {len(ds)} {fmt.name} rows of {source} ({split}), the {fmt.useless}: "
                        "there is nothing to learn")
    if useless:
        console.print(f"warning: {key}: dropped {len(useless)} of {len(ds)} {fmt.name} rows ({split}) whose {fmt.useless}, "
                      f"which teach nothing (e.g. {source} row {useless[0]})", markup=False, highlight=False)
        ds = ds.filter(fmt.teaches)
    return ds


def _overlap(train: Dataset, held: Dataset) -> int:
    """Validation rows that are training rows too (same text)."""
    seen = set(train["_text"])
    return sum(t in seen for t in held["_text"])


def _shape(ds: Dataset) -> str:
    """A rendered dataset's row kind as a user reads it: its columns, and which hold conversations."""
    return ", ".join(f"{c} (conversation)" if isinstance(ds.features[c], (List, Sequence)) else c
                     for c in sorted(ds.column_names) if c not in HIDDEN)


def _concat(parts: list[Dataset], data: DataSection, what: str) -> Dataset:
    shapes = [_shape(p) for p in parts]
    if len(set(shapes)) > 1:
        listed = "; ".join(f"data.datasets[{i}]: {FORMATS[spec.format].kind(data.template)}, {shape}"
                           for i, (spec, shape) in enumerate(zip(data.datasets, shapes)))
        raise DataError(f"data.datasets render to different row kinds for {what} ({listed}); "
                        "give every dataset the same kind (see README: Formats)")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _as_trained(ds: Dataset, unpaired: bool) -> Dataset:
    """Preference rows for a method that trains unpaired rows (KTO): each answer a row after its own prompt;
    unpaired after the validation split, so that both answers of a pair stay on one side of it."""
    if unpaired and "chosen" in ds.column_names:
        from qlcode.data.formats.kto import unpaired as unpair

        return unpair(ds)
    return ds


def rendered(data: DataSection, unpaired: bool = False, family: Family | None = None) -> tuple[Dataset, Dataset | None]:
    """(train, eval) rendered for `family`'s base, with the hidden columns; eval is None when data.validation is 0;
    `unpaired` for a method that trains unpaired rows (KTO)."""
    train_parts, eval_parts = [], []
    for i, spec in enumerate(data.datasets):
        ds = prepared(data, i, spec.split, unpaired=unpaired, family=family)
        if isinstance(data.validation, str):
            eval_parts.append(_as_trained(prepared(data, i, data.validation, unpaired=unpaired, family=family), unpaired))
        elif data.validation > 0:
            if len(ds) < 2:
                raise DataError(f"data.datasets[{i}]: {len(ds)} row(s) cannot be split for validation; set data.validation: 0")
            split = ds.train_test_split(test_size=data.validation, seed=data.seed)
            ds = split["train"]
            eval_parts.append(_as_trained(split["test"], unpaired))
        train_parts.append(_as_trained(ds, unpaired))
    train = _concat(train_parts, data, "training").shuffle(seed=data.seed)
    return train, (_concat(eval_parts, data, "validation") if eval_parts else None)


def without_hidden(ds: Dataset | None) -> Dataset | None:
    return None if ds is None else ds.remove_columns([c for c in HIDDEN if c in ds.column_names])


def build(data: DataSection, tokenizer=None, unpaired: bool = False) -> tuple[Dataset, Dataset | None]:
    """(train, eval) exactly as the trainer gets them; eval is None when data.validation is 0.

    Decontamination drops training rows sharing a 13-gram with data.decontaminate's benchmarks;
    with data.fim, a share of the training rows become infilling examples and every training row
    is tokenized (so the tokenizer is needed then, and only then). Repository rows take the layout of
    the tokenizer's family (Code Llama's without a tokenizer). Writes nothing.
    """
    from qlcode.progress import console
    from qlcode.data.decontaminate import drop_overlapping, index

    train, held = rendered(data, unpaired, None if tokenizer is None else family_of_tokenizer(tokenizer))
    if data.decontaminate:
        train, dropped = drop_overlapping(train, index(data.decontaminate))
        console.print(f"decontamination: dropped {len(dropped)} training rows sharing a 13-gram with "
                      f"{', '.join(data.decontaminate)}" + (f" (e.g. {dropped[0][1]})" if dropped else ""), markup=False, highlight=False)
    console.print(f"data: {len(train)} training rows, {len(held) if held else 0} validation rows")
    if held is not None and (same := _overlap(train, held)):
        console.print(f"warning: {same} of {len(held)} validation rows are training rows too (data.validation: "
                      f"{data.validation}): the eval loss measures what was memorised, not what generalises; "
                      "hold rows out with data.validation: 0.05, or name a split that training does not read",
                      markup=False, highlight=False)
    if data.fim is not None:
        if tokenizer is None:
            raise ValueError("data.fim tokenizes the training rows: build(data, tokenizer) needs the tokenizer")
        from qlcode.data.fim import with_infilling

        train = with_infilling(train, tokenizer, data.fim, data.seed)
    return without_hidden(train), without_hidden(held)


def check_sample(data: DataSection, rows: int = 100, unpaired: bool = False) -> list[str]:
    """Check the first `rows` rows of each dataset (each split used) against its format, in seconds.

    Returns notes on what was not checked (Hub datasets when the Hub cannot be reached; repository
    directories, which the recipe checks exist); raises one DataError listing every problem found.
    """
    from qlcode.data.sources import hub_note

    notes, problems = [], []
    for i, spec in enumerate(data.datasets):
        if spec.format == "repository":
            continue
        if spec.made_by and spec.source.endswith(LOCAL_DATA_SUFFIXES) and not Path(spec.source).exists():
            notes.append(f"data.datasets[{i}]: {spec.source} is not made yet; make it with: {spec.made_by}")
            continue
        try:
            if (note := hub_note(spec.source, f"data.datasets[{i}]")) is not None:
                notes.append(note)
                continue
            for split in [spec.split] + ([data.validation] if isinstance(data.validation, str) else []):
                prepared(data, i, split, limit=rows, unpaired=unpaired)
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError("\n".join(problems))
    return notes
