"""What a model's answer means as code, in plain text: where a base model's completion ends, the code
block of an Instruct answer, and how an Instruct model is asked for code. No model needed: the
reward, the playground and the data formats use these without loading one.
"""

from __future__ import annotations

import re

STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#", '\n"""', "\n```"]
FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)
INSTRUCT_ASK = "Complete the following Python code. Answer with the complete code in a ```python block.\n\n"


RETURN_AT_END = re.compile(r"(?:^|\s)return$")


def answers_in_one_line(prompt: str) -> bool:
    """A prompt that ends at a function body's `return` asks for the returned expression: whatever
    the model writes after that line is unreachable code (often not even Python), so it is cut."""
    return bool(RETURN_AT_END.search(prompt))


def stops(prompt: str) -> list[str]:
    """Where a base model's completion of `prompt` ends (generation stops at the first of these)."""
    return ["\n"] if answers_in_one_line(prompt) else STOPS


def truncate(completion: str, prompt: str = "") -> str:
    """Cut at the first stop sequence after some code: the rest is the model writing on."""
    cut = min((i for s in stops(prompt) if (i := completion.find(s)) > 0), default=len(completion))
    return completion[:cut].rstrip() + "\n"


def extract_code(answer: str) -> str:
    match = FENCE.search(answer)
    return (match.group(1) if match else answer).strip() + "\n"
