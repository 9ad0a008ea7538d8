"""What a model's answer means as code, in plain text: where a base model's completion ends, the code
block of an Instruct answer, and how an Instruct model is asked for code. No model needed: the
reward, the playground and the data formats use these without loading one.

One rule turns an answer into the program it stands for (`finish`, then `program`; `to_program`
does both), used by evaluation, preference pairs, the GRPO reward and the playground:
- a base model's answer is cut where it writes on (`truncate`); an Instruct model's is the code of
  its fenced block (or the whole answer when it has none);
- the program continues the prompt when the prompt is code (a signature, with or without a
  docstring, a HumanEval stub, MBPP's text in a docstring): prompt + completion, where an Instruct
  answer's whole function follows the stub on a new line; a prompt that is not code (words, a
  chat) is replaced by the answer. Benchmarks say which (Problem.continues_prompt); elsewhere
  `continues` decides from the prompt.
"""

from __future__ import annotations

import ast
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


def continues(prompt: str) -> bool:
    """Whether a prompt is code an answer continues: it parses, or does once its last line gets a body
    (a bare signature `def add(a, b):`)."""
    if not prompt.strip():
        return False
    last = prompt.rstrip().splitlines()[-1]
    body = last[:len(last) - len(last.lstrip())] + "    pass\n"
    for code in (prompt, prompt.rstrip() + "\n" + body):
        try:
            ast.parse(code)
            return True
        except (SyntaxError, ValueError):
            pass
    return False


def finish(prompt: str, answer: str, instruct: bool, continues_prompt: bool) -> str:
    """A raw model answer as the completion `program` puts after (or instead of) the prompt."""
    if instruct:
        code = extract_code(answer)
        return "\n" + code if continues_prompt else code  # a full function after the prompt's stub
    return truncate(answer, prompt)


def program(prompt: str, completion: str, continues_prompt: bool) -> str:
    """The program a finished completion stands for."""
    return prompt + completion if continues_prompt else completion


def to_program(prompt: str, answer: str, instruct: bool, continues_prompt: bool | None = None) -> str:
    """A raw answer's program, in one step; `continues_prompt` decided from the prompt when not given."""
    keep = continues(prompt) if continues_prompt is None else continues_prompt
    return program(prompt, finish(prompt, answer, instruct, keep), keep)
