"""Sample completions for benchmark problems: prompts per model kind, stop sequences, clean-up.

Base and Python models continue the problem's code; Instruct models (an Instruct base, as its family
recognises it, or an adapter trained in the instruct template) get their family's chat prompt and
answer with a fenced code block, whose code is extracted. Completions are cut
at the next top-level statement, where the function they write ends, or at the end of the line
when the prompt ends at `return` (the answer is the returned expression).
"""

from __future__ import annotations

import zlib

import torch

from qlcode.execution.benchmarks import Problem
from qlcode.execution.completions import INSTRUCT_ASK, extract_code, stops, truncate
from qlcode.inference import sampling_args


def prompt_ids(problem: Problem, tokenizer, instruct: bool) -> torch.Tensor:
    if instruct:
        messages = [{"role": "user", "content": INSTRUCT_ASK + problem.prompt}]
        return tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True,
                                             add_generation_prompt=True)["input_ids"]  # ChatML's assistant opening
    return tokenizer(problem.prompt, return_tensors="pt")["input_ids"]


def finish(problem: Problem, text: str, instruct: bool) -> str:
    """A raw model answer as a completion for Problem.program."""
    if instruct:
        code = extract_code(text)
        return "\n" + code if problem.continues_prompt else code  # a full function after the prompt's stub
    return truncate(text, problem.prompt)


def sample(model, tokenizer, problem: Problem, instruct: bool, n: int, temperature: float,
           max_new_tokens: int = 384) -> list[str]:
    """n completions, ready for Problem.program."""
    raw = sample_raw(model, tokenizer, problem, instruct, n, temperature, max_new_tokens)
    return [finish(problem, t, instruct) for t in raw]


@torch.no_grad()
def sample_raw(model, tokenizer, problem: Problem, instruct: bool, n: int, temperature: float,
               max_new_tokens: int = 384) -> list[str]:
    """n answers as the model wrote them (what a preference pair trains on).

    Seeded by the problem's id: the same samples in every run and for a base and its adapter's
    comparison, and independent across problems (one shared seed makes every problem draw the same
    random numbers, so a whole benchmark's outcomes move together)."""
    ids = prompt_ids(problem, tokenizer, instruct).to(model.device)
    torch.manual_seed(zlib.crc32(problem.task_id.encode()))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                         stop_strings=None if instruct else stops(problem.prompt), tokenizer=tokenizer, **sampling_args(temperature))
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def prompt_text(problem: Problem, instruct: bool) -> str:
    """The prompt as a preference row carries it: the user's words for Instruct models, else the code."""
    return INSTRUCT_ASK + problem.prompt if instruct else problem.prompt
