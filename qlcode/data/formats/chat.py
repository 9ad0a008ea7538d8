"""What the chat formats from elsewhere (sharegpt, openai) share: turns checked as Code Llama's chat
template needs them, with errors naming the row and the turn.

Code Llama Instruct's template takes an optional system turn first, then user and assistant turns
alternating from the user's; a row that cannot be rendered so is refused here, at its row, rather
than deep inside the template at training time.
"""

from __future__ import annotations

from qlcode.errors import DataError


def conversation(turns: list[tuple[str, str]], where: str, what: str) -> list[dict]:
    """(role, text) turns as {role, content} messages; `what(i)` names turn i of the source row in messages."""
    start = 1 if turns and turns[0][0] == "system" else 0
    for i, (role, text) in enumerate(turns):
        if not text.strip() and role != "system":
            raise DataError(f"{where}: {what(i)} is empty; every user and assistant turn needs text")
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if i >= start and role != expected:
            if role == "system":
                raise DataError(f"{where}: {what(i)} is a system turn after the conversation started; "
                                "a system prompt goes first, once")
            raise DataError(f"{where}: {what(i)} is {role} where {expected} was due; turns alternate user, assistant, "
                            "user... after an optional system turn (merge consecutive turns of one speaker)")
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(f"{where}: a conversation needs at least one assistant turn to train on")
    return [{"role": role, "content": text} for role, text in turns]
