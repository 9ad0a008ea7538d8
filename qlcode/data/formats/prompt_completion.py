"""prompt-completion: a prompt and the completion to learn."""

from __future__ import annotations

from qlcode.data.formats.base import CONVERSATION, PROMPT_COMPLETION, DataFormat, assistant, user


class PromptCompletion(DataFormat):
    name = "prompt-completion"
    required = ("prompt", "completion")
    short = "prompt/completion"
    summary = "prompt, completion"

    def kind(self, template: str) -> str:
        return CONVERSATION if template == "instruct" else PROMPT_COMPLETION

    def render(self, row: dict, template: str) -> dict:
        if template == "instruct":
            return {"messages": user(row["prompt"]) + assistant(row["completion"])}
        return {"prompt": row["prompt"], "completion": row["completion"]}

    def code(self, row: dict) -> str:
        return row["completion"]
