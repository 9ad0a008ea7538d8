"""messages: a conversation, a list of {role, content} with roles system, user and assistant."""

from __future__ import annotations

from qlcode.data.formats.base import CONVERSATION, DataFormat, check_messages


class Messages(DataFormat):
    name = "messages"
    required = ("messages",)
    short = "conversations"
    summary = "messages (a list of {role, content}; roles system, user, assistant)"

    def kind(self, template: str) -> str:
        return CONVERSATION

    def template_problem(self, template: str) -> str | None:
        if template == "completion":
            return "messages rows need data.template instruct or raw (the model's own chat template)"
        return None

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        return {"messages": check_messages(row["messages"], where)}

    def render(self, row: dict, template: str) -> dict:
        return {"messages": row["messages"]}

    def code(self, row: dict) -> str:
        """The last answer of the conversation."""
        return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant")
