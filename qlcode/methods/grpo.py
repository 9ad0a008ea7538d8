"""GRPO with execution rewards (TRL's GRPOTrainer): a model improved by running its own code.

For each problem the trainer samples a group of completions; each runs against the problem's
tests in the sandbox, in parallel, and earns the share of its assert cases that pass (0 for a
timeout, a crash, code that does not parse, or an exit before the tests: the sandbox decides from
a record the program cannot forge). An optional small format reward pays Instruct answers for a
fenced code block. Per step, metrics.jsonl and the progress bar get the mean reward, the share of
groups whose rewards differ (only those teach anything), the pass rate and the timeouts.
"""

from __future__ import annotations

import ast
from typing import Literal

from pydantic import Field

from qlcode.methods.base import Method
from qlcode.schema import Section


class GrpoSection(Section):
    num_generations: int = Field(8, ge=2, description="Completions sampled per problem (the group whose rewards are compared).")
    max_completion_length: int = Field(256, gt=0, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of the completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty towards the reference (the base without the adapter); 0 = none.")
    loss: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="TRL loss variant.")
    format_reward: float = Field(0.0, ge=0, description="Extra reward for an Instruct answer with a fenced code block (0 = off).")
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit of one completion's tests in the sandbox.")


def _program(prompt: str, completion: str, instruct: bool) -> str:
    """The code a completion stands for: an Instruct answer's fenced block, or the completion cut
    where the model writes on, after the prompt when the prompt is code (a signature to continue)."""
    from qlcode.execution.completions import extract_code, truncate

    if instruct:
        return extract_code(completion)
    try:
        ast.parse(prompt)
    except SyntaxError:
        return truncate(completion, prompt)
    return prompt + truncate(completion, prompt)


class ExecutionReward:
    """TRL reward function: each completion's share of passing test cases, run in the sandbox."""

    __name__ = "execution"

    def __init__(self, instruct: bool, timeout_s: float) -> None:
        self.instruct, self.timeout_s = instruct, timeout_s

    def __call__(self, prompts, completions, test, log_metric=None, **kw) -> list[float]:
        from qlcode.execution.reward import case_reward, split_tests
        from qlcode.execution.sandbox import Limits, run_many

        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        plain = [p if isinstance(p, str) else "" for p in prompts]
        programs, cases = [], []
        for prompt, text, tests in zip(plain, texts, test):
            setup, each = split_tests(tests)
            programs.append(f"{_program(prompt, text, self.instruct)}\n\n{setup}\n")
            cases.append(each)
        results = run_many(programs, Limits(timeout_s=self.timeout_s, cpu_s=max(1, int(self.timeout_s))), cases=cases)
        rewards = [case_reward(r) for r in results]
        if log_metric is not None:
            log_metric("pass_rate", sum(r.outcome == "passed" for r in results) / len(results))
            log_metric("timeouts", sum(r.outcome == "timeout" for r in results) / len(results))
        return rewards


class FormatReward:
    """A fenced ```python block in an Instruct answer: the format qlcode's evaluation extracts."""

    __name__ = "format"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, prompts, completions, **kw) -> list[float]:
        from qlcode.execution.completions import FENCE

        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [self.weight if FENCE.search(t) else 0.0 for t in texts]


class Grpo(Method):
    name = "grpo"
    summary = "GRPO with rewards from running unit tests"
    section = GrpoSection
    formats = ("problems",)

    def config(self, recipe, common, conversational):
        from trl import GRPOConfig

        opts = self.options(recipe)
        common = {k: v for k, v in common.items() if k != "max_length"}  # prompts are whole; completions have their own limit
        return GRPOConfig(**common, num_generations=opts.num_generations, max_completion_length=opts.max_completion_length,
                          temperature=opts.temperature, top_p=opts.top_p, beta=opts.beta, loss_type=opts.loss)

    def trainer_class(self):
        from trl import GRPOTrainer

        return GRPOTrainer

    def trainer_kwargs(self, recipe):
        opts = self.options(recipe)
        instruct = recipe.data.template == "instruct"
        funcs = [ExecutionReward(instruct, opts.timeout_s)]
        if opts.format_reward > 0 and instruct:
            funcs.append(FormatReward(opts.format_reward))
        return {"reward_funcs": funcs}

    def check(self, recipe):
        o, t = self.options(recipe), recipe.train
        if (t.micro_batch_size * t.gradient_accumulation_steps) % o.num_generations:
            return [(("train", "grpo", "num_generations"),
                     f"each step compares groups of {o.num_generations} completions, so train.micro_batch_size x "
                     f"train.gradient_accumulation_steps ({t.micro_batch_size} x {t.gradient_accumulation_steps}) must be a "
                     f"multiple of it; e.g. train.micro_batch_size: {o.num_generations}")]
        return []

    def card_lines(self, recipe):
        o = self.options(recipe)
        return [("GRPO", f"{o.num_generations} completions per problem, up to {o.max_completion_length} tokens, "
                         f"temperature {o.temperature}, beta {o.beta}, loss {o.loss}, reward: share of passing test cases"
                         + (f" + {o.format_reward} for a fenced block" if o.format_reward else ""))]


METHOD = Grpo()
