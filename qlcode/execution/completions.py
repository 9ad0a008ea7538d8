"""What a model's answer means as code, in plain text: where a base model's completion ends, the code
block of an Instruct answer, and how an Instruct model is asked for code. No model needed: the
reward, the playground and the data formats use these without loading one.
"""

from __future__ import annotations

import re

STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#", '\n"""', "\n```"]
FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)
INSTRUCT_ASK = "Complete the following Python code. Answer with the complete code in a ```python block.\n\n"


def truncate(completion: str) -> str:
    """Cut at the first stop sequence after some code: the rest is the model writing on."""
    cut = min((i for s in STOPS if (i := completion.find(s)) > 0), default=len(completion))
    return completion[:cut].rstrip() + "\n"


def extract_code(answer: str) -> str:
    match = FENCE.search(answer)
    return (match.group(1) if match else answer).strip() + "\n"
