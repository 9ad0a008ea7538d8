"""What each mode sends the model, cut to a bounded length; the cut is reported, never silent.

chat: the conversation, the new user turn cut to its last MAX_PROMPT_CHARS characters;
complete: the text, cut the same way; infill: the prefix's last and the suffix's first
MAX_PROMPT_CHARS characters. A Prompt holds exactly what the model saw, so a vote stores that.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlcode.data.fim import fim_ids, infill_prompt
from qlcode.execution.completions import to_program

MAX_PROMPT_CHARS = 8000
MODES = ("chat", "complete", "infill")


@dataclass(frozen=True)
class Prompt:
    """One pane's input as the model saw it."""

    mode: str
    messages: tuple[dict, ...] = ()  # chat: the conversation up to and including the last user turn
    text: str = ""  # complete
    prefix: str = ""  # infill
    suffix: str = ""

    def ids(self, tokenizer) -> list[int]:
        if self.mode == "infill":
            return infill_prompt(tokenizer, fim_ids(tokenizer), self.prefix, self.suffix)
        if self.mode == "chat":
            # the assistant's opening (ChatML's "<|im_start|>assistant\n"; nothing for Code Llama's [INST])
            return tokenizer.apply_chat_template(list(self.messages), tokenize=True, return_dict=True,
                                                 add_generation_prompt=True)["input_ids"]
        return tokenizer(self.text)["input_ids"]

    def program(self, answer: str) -> str:
        """The code an answer amounts to, by the rule evaluation uses (completions.to_program): a chat
        answer's code block, the prompt plus its completion cut where the model writes on; or the
        prefix, the middle and the suffix."""
        if self.mode == "chat":
            return to_program("", answer, instruct=True)
        if self.mode == "complete":
            return to_program(self.text, answer, instruct=False, continues_prompt=True)
        return self.prefix + answer + self.suffix

    def shown(self) -> str:
        """The user's side as text, for the transcript."""
        if self.mode == "chat":
            return self.messages[-1]["content"]
        if self.mode == "complete":
            return self.text
        return f"{self.prefix}<FILL>{self.suffix}"


def _cut(text: str, keep_end: bool, what: str) -> tuple[str, str]:
    if len(text) <= MAX_PROMPT_CHARS:
        return text, ""
    kept = text[-MAX_PROMPT_CHARS:] if keep_end else text[:MAX_PROMPT_CHARS]
    side = "last" if keep_end else "first"
    return kept, (f"The {what} was cut to its {side} {MAX_PROMPT_CHARS:,} characters (it had {len(text):,}): "
                  "the model saw only those, and a vote stores only those.")


def user_turn(mode: str, text: str, prefix: str, suffix: str) -> tuple[dict, str]:
    """The user's new input for a mode, cut: ({text} or {prefix, suffix}, the notice of any cut)."""
    if mode == "infill":
        prefix, cut_p = _cut(prefix, True, "prefix")
        suffix, cut_s = _cut(suffix, False, "suffix")
        return {"prefix": prefix, "suffix": suffix}, " ".join(n for n in (cut_p, cut_s) if n)
    text, notice = _cut(text, True, "prompt")
    return {"text": text}, notice


def pane_prompt(mode: str, turn: dict, history: list[dict]) -> Prompt:
    """A pane's Prompt: chat continues the pane's own conversation; complete and infill stand alone."""
    if mode == "chat":
        return Prompt("chat", messages=(*history, {"role": "user", "content": turn["text"]}))
    if mode == "complete":
        return Prompt("complete", text=turn["text"])
    return Prompt("infill", prefix=turn["prefix"], suffix=turn["suffix"])
