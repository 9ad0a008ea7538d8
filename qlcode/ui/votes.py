"""Votes: one per generation, each a preference row that a DPO recipe loads.

The votes directory holds one file per mode, each in one row format (a JSON Lines file whose rows
all have the same shape, so `datasets` loads it):
- chat.jsonl: TRL's conversational preference rows: prompt = the conversation up to the last user
  turn (as the chosen model saw it), chosen / rejected = [{"role": "assistant", "content": ...}];
  rejected_prompt = the other pane's conversation where its earlier answers differ.
- complete.jsonl: prompt (the text the model saw), chosen, rejected (the completions).
- infill.jsonl: prompt (the infilling prompt as the model saw it, <PRE> prefix <SUF> suffix <MID>),
  chosen, rejected (the middles), prefix, suffix.
- ties.jsonl: a tie names both models and both answers; it is counted, not trained on.
Every row also names its mode, the models (chosen_model / rejected_model, or models), the
generation it judges and whether the models were hidden (blind). One line per write: a crash
leaves whole rows.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.ui.prompts import Prompt

CHOICES = ("left", "right", "tie")
TIES = "ties.jsonl"


class VoteError(QlcodeError):
    """A vote that cannot be recorded (nothing generated yet, already voted, an empty answer)."""


@dataclass(frozen=True)
class Generation:
    """One Send's result in both panes, as a vote judges it."""

    mode: str
    models: tuple[str, str]  # left, right
    prompts: tuple[Prompt, Prompt]
    answers: tuple[str, str]
    prompt_text: str = ""  # infill: the prompt as the model's tokenizer laid it out
    blind: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def vote_row(gen: Generation, choice: str) -> dict:
    """The row a vote writes (see the module docstring for the shapes)."""
    meta = {"mode": gen.mode, "generation": gen.id, "blind": gen.blind, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if choice == "tie":
        prompt = list(gen.prompts[0].messages) if gen.mode == "chat" else gen.prompt_text or gen.prompts[0].text
        return {"prompt": prompt, "answers": list(gen.answers), "models": list(gen.models), **meta}
    c, r = (0, 1) if choice == "left" else (1, 0)
    models = {"chosen_model": gen.models[c], "rejected_model": gen.models[r]}
    if gen.mode == "chat":
        row = {"prompt": list(gen.prompts[c].messages), "chosen": _assistant(gen.answers[c]), "rejected": _assistant(gen.answers[r])}
        if gen.prompts[r].messages != gen.prompts[c].messages:
            row["rejected_prompt"] = list(gen.prompts[r].messages)
        return {**row, **models, **meta}
    if gen.mode == "complete":
        return {"prompt": gen.prompts[c].text, "chosen": gen.answers[c], "rejected": gen.answers[r], **models, **meta}
    return {"prompt": gen.prompt_text, "chosen": gen.answers[c], "rejected": gen.answers[r],
            "prefix": gen.prompts[c].prefix, "suffix": gen.prompts[c].suffix, **models, **meta}


class VoteBook:
    """The votes directory; it takes one vote per generation, also across sessions and restarts."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.Lock()
        self.voted = {row["generation"] for row in self.rows() if "generation" in row}

    def file(self, mode: str) -> Path:
        return self.root / f"{mode}.jsonl"

    def record(self, gen: Generation | None, choice: str) -> dict:
        if choice not in CHOICES:
            raise VoteError(f"a vote is left, right or tie, not {choice!r}")
        if gen is None:
            raise VoteError("nothing to vote on yet: send a prompt first")
        for side, answer in zip(("left", "right"), gen.answers):
            if not answer.strip():
                raise VoteError(f"the {side} answer is empty: there is nothing to compare (send again)")
        row = vote_row(gen, choice)
        with self.lock:
            if gen.id in self.voted:
                raise VoteError("this generation already has a vote: send a new prompt to vote again")
            path = self.root / TIES if choice == "tie" else self.file(gen.mode)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            self.voted.add(gen.id)
        return row

    def rows(self) -> list[dict]:
        """Every vote so far, preference rows and ties (read under the lock: no half-appended line)."""
        rows = []
        with self.lock:
            for path in sorted(self.root.glob("*.jsonl")) if self.root.is_dir() else ():
                with path.open(encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                rows.append(json.loads(line))
                            except json.JSONDecodeError as e:
                                raise QlcodeError(f"{path} line {n}: not a JSON row ({e}); fix or remove that line") from None
        return rows
