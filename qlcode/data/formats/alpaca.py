"""alpaca: an instruction, an optional input (context), and the output to learn."""

from __future__ import annotations

from qlcode.data.formats.base import CONVERSATION, PROMPT_COMPLETION, DataFormat, assistant, user
from qlcode.data.templates import comment_prompt


class Alpaca(DataFormat):
    name = "alpaca"
    required = ("instruction", "output")
    optional = ("input",)
    short = "instruction/output"
    summary = "instruction, input (optional), output"

    def kind(self, template: str) -> str:
        return CONVERSATION if template == "instruct" else PROMPT_COMPLETION

    def render(self, row: dict, template: str) -> dict:
        asked = row["instruction"].strip() + (f"\n\n{row['input'].strip()}" if row["input"].strip() else "")
        if template == "instruct":
            return {"messages": user(asked) + assistant(row["output"])}
        if template == "completion":  # the instruction as comments above the code
            return {"prompt": comment_prompt(row["instruction"], row["input"]), "completion": row["output"]}
        return {"prompt": asked + "\n", "completion": row["output"]}

    def code(self, row: dict) -> str:
        return row["output"]
