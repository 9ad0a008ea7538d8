"""openai: OpenAI chat rows, `messages: [{role, content, name?}]`, as OpenAI's fine-tuning files and
chat logs hold them.

Roles system (or developer, its newer name), user and assistant; `content` is text or a list of
text parts ({type: text, text}), joined in order; `name` is accepted and not rendered, since Code
Llama's chat template has no place for a speaker's name; `weight: 0` (OpenAI's "do not learn this
answer") is refused rather than silently learned. Tool calls and tool results are refused.
"""

from __future__ import annotations

from qlcode.data.formats.base import row_text
from qlcode.data.formats.chat import conversation
from qlcode.data.formats.messages import Messages
from qlcode.errors import DataError

ROLE_OF = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def content_text(content, where: str) -> str:
    """A message's content as text: text itself, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else None
                raise DataError(f"{where}.content[{j}] must be a text part {{type: text, text}}, got "
                                + (f"a {kind} part; qlcode trains on text only" if kind else repr(part)))
        return "".join(part["text"] for part in content)
    raise DataError(f"{where}.content must be text or a non-empty list of text parts, got {content!r}")


class OpenAI(Messages):
    name = "openai"
    required = ("messages",)
    short = "OpenAI chat messages"
    summary = "messages (a list of {role: system|developer|user|assistant, content: text or text parts, name (optional)})"

    def local_row(self, row: dict, columns: dict[str, str]) -> dict:
        """Text content as one text part, so that text and part lists mix in a file (Arrow holds one type per
        column); content_text joins them back, and any other content is left for `check` to name."""
        messages = row.get(columns.get("messages", "messages"))
        for m in messages if isinstance(messages, list) else ():
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                m["content"] = [{"type": "text", "text": m["content"]}]
        return row

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        messages, col = row["messages"], column["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: messages ({col!r}) must be a non-empty list of {{role, content}}, got {messages!r}")
        turns = []
        for i, m in enumerate(messages):
            at = f"{where}: messages[{i}]"
            if not isinstance(m, dict) or m.get("role") not in ROLE_OF:
                role = m.get("role") if isinstance(m, dict) else None
                raise DataError(f"{at} must be {{role: system|developer|user|assistant, content}}, got "
                                + (f"role {role!r}; tool turns have no place in Code Llama's chat template: leave such rows out"
                                   if role in ("tool", "function") else repr(m)))
            if m.get("tool_calls") or m.get("function_call"):
                raise DataError(f"{at} is a tool call; tool turns have no place in Code Llama's chat template: leave such rows out")
            if m.get("weight") == 0:
                raise DataError(f"{at} has weight 0 (not to be learned), which qlcode does not honour; "
                                "cut the conversation before it or set its weight to 1")
            if m.get("name") is not None and not isinstance(m["name"], str):
                raise DataError(f"{at}.name must be text, got {m['name']!r}")
            turns.append((ROLE_OF[m["role"]], content_text(m.get("content"), at)))
        return {"messages": conversation(turns, where, lambda i: f"messages[{i}]")}

    def contamination_text(self, row: dict) -> str:
        return row_text(row["messages"])
