"""GRPO with execution rewards (TRL's GRPOTrainer): a model improved by running its own code.

For each problem the trainer samples a group of completions; each runs against the problem's
tests in the sandbox, in parallel, and earns the share of its assert cases that pass (0 for a
timeout, a crash, code that does not parse, or an exit before the tests), judged outside the
sandbox on the values the program returns where the tests decompose (judge.py). An optional small format reward
pays Instruct answers for a fenced code block. Per step, metrics.jsonl and the progress bar get the
mean reward, the share of groups whose rewards differ (only those teach anything), the pass rate
and the timeouts. Problems with `hidden_tests` are also run against those (never rewarded):
`reward/visible_pass` and `reward/hidden_pass` are the shares of completions passing all of each,
so a widening gap shows a policy learning the visible tests rather than the task.
"""

from __future__ import annotations

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
    vllm: bool = Field(False, description="Generate the completions with vLLM colocated on the training GPU (TRL's vllm_mode colocate; "
                                          "CUDA only, pip install \"qlcode[vllm]\").")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="Share of the GPU's memory vLLM holds for generation "
                                                                             "(its weights and KV cache); qlcode plan leaves training the rest.")


def _code_prompt(prompt) -> str:
    """The problem's text as the answer rule sees it: a conversation's last turn, without the ask
    qlcode puts before the code (problems.render)."""
    from qlcode.execution.completions import INSTRUCT_ASK

    if isinstance(prompt, str):
        return prompt
    turn = prompt[-1]["content"] if prompt else ""
    return turn.removeprefix(INSTRUCT_ASK) if isinstance(turn, str) else ""


def _program(prompt, completion: str, instruct: bool) -> str:
    """The code a completion stands for: completions.to_program, the rule evaluation uses too."""
    from qlcode.execution.completions import to_program

    return to_program(_code_prompt(prompt), completion, instruct)


class ExecutionReward:
    """TRL reward function: each completion's share of passing test cases, run in the sandbox."""

    __name__ = "execution"

    def __init__(self, instruct: bool, timeout_s: float) -> None:
        self.instruct, self.timeout_s = instruct, timeout_s

    def __call__(self, prompts, completions, test, log_metric=None, entry_point=None, hidden_test=None,
                 **kw) -> list[float]:
        from qlcode.execution.judge import program_names, run_tests_many
        from qlcode.execution.reward import case_reward
        from qlcode.execution.sandbox import Limits

        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        entries = entry_point or [""] * len(texts)
        hidden = hidden_test or [""] * len(texts)
        names = [program_names(_code_prompt(p)) | ({e} if e else set()) for p, e in zip(prompts, entries)]
        programs = [_program(p, t, self.instruct) for p, t in zip(prompts, texts)]
        jobs = list(zip(programs, test, names))
        hidden_jobs = [(code, h, n) for code, h, n in zip(programs, hidden, names) if h]
        limits = Limits(timeout_s=self.timeout_s, cpu_s=max(1, int(self.timeout_s)))
        results = run_tests_many(jobs + hidden_jobs, limits)
        results, hidden_results = results[:len(jobs)], results[len(jobs):]
        rewards = [case_reward(r) for r in results]
        if log_metric is not None:
            passed = [r.outcome == "passed" for r in results]
            log_metric("pass_rate", sum(passed) / len(results))
            log_metric("timeouts", sum(r.outcome == "timeout" for r in results) / len(results))
            log_metric("judged_outside", sum(r.judged == "outside" for r in results) / len(results))
            if hidden_results:
                visible = [ok for ok, h in zip(passed, hidden) if h]
                log_metric("reward/visible_pass", sum(visible) / len(visible))
                log_metric("reward/hidden_pass", sum(r.outcome == "passed" for r in hidden_results) / len(hidden_results))
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
        vllm = {}
        if opts.vllm:
            from qlcode.execution.engines import require_vllm

            require_vllm("train.grpo.vllm")
            vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": opts.vllm_gpu_memory_utilization}
        return GRPOConfig(**common, num_generations=opts.num_generations, max_completion_length=opts.max_completion_length,
                          temperature=opts.temperature, top_p=opts.top_p, beta=opts.beta, loss_type=opts.loss, **vllm)

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
                         + (f" + {o.format_reward} for a fenced block" if o.format_reward else "")
                         + (f"; generated by vLLM colocated ({o.vllm_gpu_memory_utilization:.0%} of the GPU)" if o.vllm else ""))]


METHOD = Grpo()
