"""sharegpt: ShareGPT rows, `conversations: [{from: human|gpt|system, value}]`, as LLaMA-Factory
and axolotl read them, with an optional top-level `system` prompt.

Rendered as the messages format is (a conversation under instruct or raw). Tool turns
(`function_call`, `observation`) have no place in Code Llama's chat template and are refused.
"""

from __future__ import annotations

from qlcode.data.formats.base import row_text
from qlcode.data.formats.chat import conversation
from qlcode.data.formats.messages import Messages
from qlcode.errors import DataError

ROLE_OF = {"human": "user", "gpt": "assistant", "system": "system"}


class ShareGPT(Messages):
    name = "sharegpt"
    required = ("conversations",)
    optional = ("system",)
    short = "ShareGPT conversations"
    summary = "conversations (a list of {from: human|gpt|system, value}), system (optional)"

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        turns, col = row["conversations"], column["conversations"]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: conversations ({col!r}) must be a non-empty list of {{from, value}}, got {turns!r}")
        pairs = []
        for i, turn in enumerate(turns):
            speaker = turn.get("from") if isinstance(turn, dict) else None
            if speaker not in ROLE_OF or not isinstance(turn.get("value"), str):
                raise DataError(f"{where}: conversations[{i}] must be {{from: human|gpt|system, value: text}}, got {turn!r}"
                                + ("; tool turns have no place in Code Llama's chat template: leave such rows out"
                                   if speaker in ("function_call", "observation", "tool") else ""))
            pairs.append((ROLE_OF[speaker], turn["value"]))
        system = row.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: system ({column['system']!r}) must be text, got {system!r}")
        if system and system.strip():
            if pairs[0][0] == "system":
                raise DataError(f"{where}: two system prompts (the system column and conversations[0]); keep one")
            pairs.insert(0, ("system", system))
        offset = 1 if system and system.strip() else 0
        return {"messages": conversation(pairs, where, lambda i: f"conversations[{i - offset}]")}

    def contamination_text(self, row: dict) -> str:
        return row_text(row["messages"])
