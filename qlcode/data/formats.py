"""Row formats: check each row against its declared format and map it to canonical fields.

Formats and their fields (rename dataset columns onto them with `columns:`):
- alpaca: instruction, input (optional), output
- prompt-completion: prompt, completion
- messages: messages (a list of {role, content}; roles system, user, assistant)
- text: text
- preference: prompt, chosen, rejected
"""

from __future__ import annotations

from datasets import Dataset

from qlcode.errors import DataError

FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # format: (required fields, optional fields)
    "alpaca": (("instruction", "output"), ("input",)),
    "prompt-completion": (("prompt", "completion"), ()),
    "messages": (("messages",), ()),
    "text": (("text",), ()),
    "preference": (("prompt", "chosen", "rejected"), ()),
}
ROLES = {"system", "user", "assistant"}


def _check_messages(value, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be {{role: system|user|assistant, content: text}}, got {m!r}")
    if not any(m["role"] == "assistant" for m in value):
        raise DataError(f"{where}: a conversation needs at least one assistant message to train on")


def canonical(ds: Dataset, fmt: str, columns: dict[str, str], key: str, source: str) -> Dataset:
    """Rows with exactly the format's fields; a missing column or a bad row is a DataError."""
    required, optional = FIELDS[fmt]
    unknown = set(columns) - set(required) - set(optional)
    if unknown:
        raise DataError(f"{key}.columns: {', '.join(sorted(unknown))} is not a field of {fmt} rows (fields: {', '.join(required + optional)})")
    rename = {f: columns.get(f, f) for f in required + optional}
    for field in required:
        if rename[field] not in ds.column_names:
            raise DataError(
                f"{key}: {source} has no column {rename[field]!r} for {fmt} field {field!r} "
                f"(columns: {', '.join(ds.column_names)}); map one with {key}.columns: {{{field}: COLUMN}}"
            )
    present = {f: c for f, c in rename.items() if c in ds.column_names}

    def convert(row: dict, idx: int) -> dict:
        out = {f: row[c] for f, c in present.items()}
        where = f"{source} row {idx}"
        for f in required:
            if f == "messages":
                _check_messages(out[f], where)
            elif not isinstance(out[f], str) or not out[f].strip():
                raise DataError(f"{where}: {f} ({rename[f]!r}) must be non-empty text, got {out[f]!r}")
        for f in optional:
            out[f] = out.get(f) or ""
        return out

    return ds.map(convert, with_indices=True, remove_columns=ds.column_names, desc=f"Checking {source}")
