"""Sample completions for benchmark problems: prompts per model kind, stop sequences, clean-up.

Base and Python models continue the problem's code; Instruct models (an Instruct base, as its family
recognises it, or an adapter trained in the instruct template) get their family's chat prompt and
answer with a fenced code block, whose code is extracted. Completions are cut
at the next top-level statement, where the function they write ends, or at the end of the line
when the prompt ends at `return` (the answer is the returned expression).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import torch

from qlcode.execution.benchmarks import Problem
from qlcode.execution import completions
from qlcode.execution.completions import INSTRUCT_ASK, stops
from qlcode.execution.engines import Engine, Request, Sampling


def prompt_ids(problem: Problem, tokenizer, instruct: bool) -> torch.Tensor:
    if instruct:
        messages = [{"role": "user", "content": INSTRUCT_ASK + problem.prompt}]
        return tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True,
                                             add_generation_prompt=True)["input_ids"]  # ChatML's assistant opening
    return tokenizer(problem.prompt, return_tensors="pt")["input_ids"]


def finish(problem: Problem, text: str, instruct: bool) -> str:
    """A raw model answer as a completion for Problem.solution (completions.finish: the one rule)."""
    return completions.finish(problem.prompt, text, instruct, problem.continues_prompt)


def sample(engine: Engine, problems: list[Problem], instruct: bool, n: int, temperature: float,
           max_new_tokens: int = 384) -> Iterator[tuple[Problem, list[str]]]:
    """Each problem with its n completions, ready for Problem.program, in the problems' order."""
    for problem, raw in sample_raw(engine, problems, instruct, n, temperature, max_new_tokens):
        yield problem, [finish(problem, t, instruct) for t in raw]


def seed(problem: Problem, number: int) -> int:
    """The seed of a problem's sample `number`: from its task id, so the same samples in every run,
    for a base and its adapter's comparison, and whichever problems share its batch; independent
    across problems (one shared seed makes every problem draw the same random numbers, so a whole
    benchmark's outcomes move together)."""
    return zlib.crc32(f"{problem.task_id}#{number}".encode())


def sample_raw(engine: Engine, problems: list[Problem], instruct: bool, n: int, temperature: float,
               max_new_tokens: int = 384) -> Iterator[tuple[Problem, list[str]]]:
    """Each problem with its n answers as the model wrote them (what a preference pair trains on),
    in the problems' order, as soon as its last answer is written: the engine generates many
    problems' samples at once, so execution of the first problems overlaps generation of the next."""
    requests = []
    for problem in problems:
        prompt = tuple(prompt_ids(problem, engine.tokenizer, instruct)[0].tolist())
        stop = () if instruct else tuple(stops(problem.prompt))
        requests += [Request(prompt, stop, seed(problem, j)) for j in range(n)]
    answers: list[list[str]] = [[""] * n for _ in problems]
    left, ready = [n] * len(problems), 0
    for i, text in engine.generate(requests, Sampling(temperature, max_new_tokens)):
        p, j = divmod(i, n)
        answers[p][j] = text
        left[p] -= 1
        while ready < len(problems) and not left[ready]:
            yield problems[ready], answers[ready]
            ready += 1


def in_order(samples: Iterator[tuple[Problem, list[str]]]) -> Callable[[Problem], list[str]]:
    """`evaluate.execute` asks for each problem's completions once, in its list's order: each call
    takes the next problem's from `samples` (which generates ahead, in batches)."""
    def completions(problem: Problem) -> list[str]:
        given, texts = next(samples)
        if given is not problem:
            raise RuntimeError(f"completions asked for {problem.task_id} out of order (next is {given.task_id})")
        return texts
    return completions


def prompt_text(problem: Problem, instruct: bool) -> str:
    """The prompt as a preference row carries it: the user's words for Instruct models, else the code."""
    return INSTRUCT_ASK + problem.prompt if instruct else problem.prompt
