"""kto: unpaired rows, a prompt with one answer labelled desirable (true) or not (false), for KTO.

Preference rows train KTO too: `unpaired` splits each into a chosen row (label true) and a
rejected row (label false), with TRL's own `unpair_preference_dataset`; a rejected answer that
followed another conversation (a playground vote's rejected_prompt) keeps that conversation as its prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlcode.data.formats.base import UNPAIRED, DataFormat
from qlcode.data.formats.preference import OTHER, answer_text, prompt_value, rendered_answer, rendered_prompt
from qlcode.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset


class Kto(DataFormat):
    name = "kto"
    required = ("prompt", "completion", "label")
    short = "prompt/completion/label"
    summary = "prompt (text or a conversation), completion (text or an assistant message), label (true = desirable)"

    def kind(self, template: str) -> str:
        return UNPAIRED

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        if not isinstance(row["label"], bool):
            raise DataError(f"{where}: label ({column['label']!r}) must be true or false, got {row['label']!r}")
        return {"prompt": prompt_value(row["prompt"], where, column, template),
                "completion": answer_text(row["completion"], "completion", where, column), "label": row["label"]}

    def render(self, row: dict, template: str) -> dict:
        prompt = rendered_prompt(row["prompt"], template)
        return {"prompt": prompt, "completion": rendered_answer(row["completion"], prompt), "label": row["label"]}


def unpaired(ds: Dataset) -> Dataset:
    """Rendered preference rows as KTO rows: each pair gives (prompt, chosen, true) and (prompt, rejected, false),
    the rejected answer's prompt being its own where the row names one (the hidden OTHER column)."""
    from trl import unpair_preference_dataset

    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise DataError(f"only preference rows (prompt, chosen, rejected) can be unpaired for KTO; these lack {', '.join(sorted(missing))}")
    ds = unpair_preference_dataset(ds)  # other columns, OTHER included, are copied to both rows
    if OTHER not in ds.column_names:
        return ds
    own = ds.map(lambda row: {"prompt": row["prompt"] if row["label"] or row[OTHER] is None else row[OTHER]},
                 desc="Giving each rejected answer its own conversation")
    return own.remove_columns(OTHER)
