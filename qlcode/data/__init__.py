"""From a recipe's `data:` section to the train and eval datasets TRL consumes.

Each dataset is loaded, checked against its format, trimmed to max_rows, rendered with the
recipe's template into one of TRL's row kinds (conversation, prompt/completion, text, preference),
and concatenated. The validation rows come from a named split or a seeded fraction.
"""

from __future__ import annotations

from datasets import Dataset, concatenate_datasets

from qlcode.data.formats import canonical
from qlcode.data.repository import repository_dataset
from qlcode.data.sources import load_source
from qlcode.data.templates import comment_prompt
from qlcode.errors import DataError
from qlcode.recipe import DataSection, DatasetSpec


def _user_text(row: dict) -> str:
    return row["instruction"].strip() + (f"\n\n{row['input'].strip()}" if row["input"].strip() else "")


def render(row: dict, fmt: str, template: str) -> dict:
    """One canonical row as the TRL row kind for this template (see README: Data)."""
    if fmt == "text":
        return {"text": row["text"]}
    if fmt == "messages":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
    if fmt == "alpaca":
        prompt, answer = _user_text(row), row["output"]
    else:
        prompt, answer = row["prompt"], row.get("completion")
    if template == "codellama-instruct":
        user = [{"role": "user", "content": prompt}]
        if fmt == "preference":
            return {"prompt": user, "chosen": [{"role": "assistant", "content": row["chosen"]}],
                    "rejected": [{"role": "assistant", "content": row["rejected"]}]}
        return {"messages": user + [{"role": "assistant", "content": answer}]}
    if template == "completion" and fmt == "alpaca":
        prompt = comment_prompt(row["instruction"], row["input"])
    elif template == "raw" and fmt == "alpaca":
        prompt = prompt + "\n"
    if fmt == "preference":
        return {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
    return {"prompt": prompt, "completion": answer}


def prepared(spec: DatasetSpec, split: str, data: DataSection, key: str) -> Dataset:
    """One split of one dataset, checked and rendered, in its own row order."""
    if spec.format == "repository":
        ds = repository_dataset(spec.source, key)
        return ds.select(range(min(spec.max_rows, len(ds)))) if spec.max_rows else ds
    ds = load_source(spec, split, key)
    if spec.max_rows is not None and split == spec.split:
        ds = ds.shuffle(seed=data.seed).select(range(min(spec.max_rows, len(ds))))
    ds = canonical(ds, spec.format, spec.columns, key, spec.source)
    if spec.format == "messages" and data.template == "completion":
        raise DataError(f"{key}: messages rows need data.template codellama-instruct or raw (the model's own chat template)")
    return ds.map(render, fn_kwargs={"fmt": spec.format, "template": data.template},
                  remove_columns=ds.column_names, desc=f"Rendering {spec.source}")


def _concat(parts: list[Dataset], what: str) -> Dataset:
    kinds = {tuple(sorted(p.column_names)) for p in parts}
    if len(kinds) > 1:
        raise DataError(f"data.datasets render to different row kinds {sorted(kinds)} for {what}; "
                        "give every dataset the same kind (conversation, prompt/completion or text)")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def build_datasets(data: DataSection) -> tuple[Dataset, Dataset | None]:
    """(train, eval) for the recipe; eval is None when data.validation is 0."""
    train_parts, eval_parts = [], []
    for i, spec in enumerate(data.datasets):
        key = f"data.datasets[{i}]"
        ds = prepared(spec, spec.split, data, key)
        if isinstance(data.validation, str):
            eval_parts.append(prepared(spec, data.validation, data, key))
        elif data.validation > 0:
            if len(ds) < 2:
                raise DataError(f"{key}: {len(ds)} row(s) cannot be split for validation; set data.validation: 0")
            split = ds.train_test_split(test_size=data.validation, seed=data.seed)
            ds = split["train"]
            eval_parts.append(split["test"])
        train_parts.append(ds)
    train = _concat(train_parts, "training").shuffle(seed=data.seed)
    return train, (_concat(eval_parts, "validation") if eval_parts else None)
