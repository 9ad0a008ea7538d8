"""preference: a prompt with a chosen and a rejected answer (DPO; KTO after `unpaired`).

The prompt is text or a conversation (a list of {role, content} ending with the user's turn, as
the playground stores its votes); each answer is text, an assistant message, or a list holding one.

A playground vote on a later chat turn may carry `rejected_prompt`: the conversation the rejected
answer followed, whose earlier answers differ from the chosen side's. DPO and ORPO train both
answers after one prompt, so such a row would teach the rejected answer after a conversation it
never saw: for them it is left out, and the count printed. KTO's unpaired rows keep it: each answer
is trained after its own conversation (qlcode.data.formats.kto.unpaired).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlcode.data.formats.base import PREFERENCE, DataFormat, assistant, check_messages, user
from qlcode.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

OTHER = "_rejected_prompt"  # a rendered row's hidden column: the rejected answer's own prompt, where it differs


def answer_text(value, f: str, where: str, column: dict[str, str]) -> str:
    """An answer as text: from text, {role: assistant, content}, or a list holding one such message."""
    message = value[0] if isinstance(value, list) and len(value) == 1 else value
    if isinstance(message, dict):
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: {f} ({column[f]!r}) must be text or {{role: assistant, content: text}}, got {value!r}")
        message = message["content"]
    if not isinstance(message, str) or not message.strip():
        raise DataError(f"{where}: {f} ({column[f]!r}) must be non-empty text or one assistant message, got {value!r}")
    return message


def prompt_value(value, where: str, column: dict[str, str], template: str) -> str | list[dict]:
    """A prompt: non-empty text, or a conversation ending with the user's turn (not under the completion template)."""
    if isinstance(value, list):
        if template == "completion":
            raise DataError(f"{where}: a conversational prompt needs data.template instruct or raw "
                            "(the model's own chat template), not completion")
        messages = check_messages(value, f"{where}: prompt ({column['prompt']!r})", need_assistant=False)
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: prompt ({column['prompt']!r}) must end with the user's turn, got {messages[-1]['role']}")
        return messages
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: prompt ({column['prompt']!r}) must be non-empty text or a conversation, got {value!r}")
    return value


def rendered_prompt(prompt: str | list[dict], template: str) -> str | list[dict]:
    """A conversation under instruct, or when the row is one; text otherwise."""
    if isinstance(prompt, list):
        return prompt
    return user(prompt) if template == "instruct" else prompt


def rendered_answer(text: str, prompt: str | list[dict]) -> str | list[dict]:
    return assistant(text) if isinstance(prompt, list) else text


class Preference(DataFormat):
    name = "preference"
    required = ("prompt", "chosen", "rejected")
    optional = ("rejected_prompt",)
    short = "chosen/rejected"
    summary = ("prompt (text or a conversation), chosen, rejected (text or an assistant message), optional rejected_prompt "
               "(the rejected answer's own conversation: a row where it differs is left out)")

    useless = "chosen answer is the same as its rejected one"

    def kind(self, template: str) -> str:
        return PREFERENCE

    def teaches(self, row: dict) -> bool:
        """A pair of equal answers has no preference: DPO's loss stays at ln 2 on it."""
        return row["chosen"].strip() != row["rejected"].strip()

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        prompt = prompt_value(row["prompt"], where, column, template)
        other = row.get("rejected_prompt")
        if other is not None:
            other = prompt_value(other, where, {"prompt": column["rejected_prompt"]}, template)
        return {"prompt": prompt, "chosen": answer_text(row["chosen"], "chosen", where, column),
                "rejected": answer_text(row["rejected"], "rejected", where, column),
                "rejected_prompt": other if other != prompt else None}

    def render(self, row: dict, template: str) -> dict:
        """TRL's preference row; a checked row (which always has rejected_prompt) also carries the hidden OTHER."""
        prompt = rendered_prompt(row["prompt"], template)
        out = {"prompt": prompt, "chosen": rendered_answer(row["chosen"], prompt),
               "rejected": rendered_answer(row["rejected"], prompt)}
        if "rejected_prompt" in row:
            other = row["rejected_prompt"]
            out[OTHER] = None if other is None else rendered_prompt(other, template)
        return out

    def for_method(self, ds: Dataset, key: str, source: str, unpaired: bool) -> Dataset:
        """DPO, ORPO: the rows whose two answers followed the same prompt; the others are counted and left out.
        KTO: every row, with each rejected answer's own prompt (unpaired after the validation split, pipeline.rendered)."""
        from qlcode.progress import console

        if unpaired:
            return ds
        other = sum(o is not None for o in ds[OTHER])
        if other:
            note = (f"{key}: {other} of {len(ds)} rows of {source} have a rejected answer that followed another "
                    "conversation (rejected_prompt, a later turn of a playground chat)")
            if other == len(ds):
                raise DataError(f"{note}: none is left to train on, since DPO and ORPO train both answers after one "
                                "prompt; vote on first turns (New chat before each vote) to get rows they can use, or "
                                "train KTO (train.method: kto), which keeps each answer after its own conversation")
            console.print(f"{note}: left out, since DPO and ORPO train both answers after one prompt "
                          "(KTO keeps them)", markup=False, highlight=False)
            ds = ds.filter(lambda o: o is None, input_columns=OTHER)
        return ds.remove_columns(OTHER)
