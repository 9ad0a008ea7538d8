"""Verdicts judged outside the sandbox against the old way, on the same programs.

    python benchmarks/judged.py [--samples 8] [--split test] [--humaneval-limit 5] [--skip-references]

For each set of programs, every program is judged twice: the old way (solution and tests as one
script in the sandbox, the verdict from the harness's record: Problem.program + sandbox.run; and
for the reward, each assert a case run inside) and the new (Problem.run: judged outside where the
test decomposes, judge.py). Sets: the reference solutions of HumanEval (164), MBPP (500, the
shipped copy) and python-basics (168, with the hidden tests too); and the micro model's samples,
seeded per problem as `qlcode eval` draws them: python-basics (its held-out split by default,
T=1.0, 16 tokens, as benchmarks/grpo_micro.py) and the first HumanEval problems (2 samples, T=0.8,
48 tokens). Prints, per set,
the share judged outside, passes each way, verdicts and rewards that differ, and each difference.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlcode.execution.benchmarks import Problem, humaneval, mbpp, python_basics  # noqa: E402
from qlcode.execution.judge import split_tests  # noqa: E402
from qlcode.execution.reward import case_reward  # noqa: E402
from qlcode.execution.sandbox import Limits, run, run_many  # noqa: E402
from qlcode.execution.judge import run_tests_many  # noqa: E402

MBPP = Path(__file__).resolve().parent.parent / "tests" / "data" / "mbpp.jsonl"
LIMITS = Limits()


def old_reward(problem: Problem, completion: str) -> float:
    """The reward as it was: each assert a case, run inside after the solution and the tests' setup."""
    setup, cases = split_tests(problem.test)
    return case_reward(run(f"{problem.solution(completion)}\n\n{setup}\n", LIMITS, cases=cases))


def compare(name: str, jobs: list[tuple[Problem, str]]) -> None:
    start = time.perf_counter()
    old = run_many([p.program(c) for p, c in jobs], LIMITS, workers=2)
    new = run_tests_many([(p.solution(c), p.test, p.names) for p, c in jobs], LIMITS, workers=2)
    rewards_old = [old_reward(p, c) for p, c in jobs]
    seconds = time.perf_counter() - start
    outside = sum(r.judged == "outside" for r in new)
    changed = [(p.task_id, o, n) for (p, _), o, n in zip(jobs, old, new) if (o.outcome == "passed") != (n.outcome == "passed")]
    reward_changed = sum(abs(a - case_reward(n)) > 1e-12 for a, n in zip(rewards_old, new))
    print(f"| {name} | {len(jobs)} | {outside} ({100 * outside / len(jobs):.1f}%) | {sum(r.outcome == 'passed' for r in old)} | "
          f"{sum(r.outcome == 'passed' for r in new)} | {len(changed)} | {reward_changed} | {seconds:.0f} |", flush=True)
    for task_id, o, n in changed:
        print(f"|   {task_id}: old {o.outcome} ({o.error_type}), now {n.outcome} ({n.error_type}, judged {n.judged}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8, help="micro-model samples per python-basics problem")
    ap.add_argument("--split", choices=["train", "test", "all"], default="test", help="python-basics split the micro model samples")
    ap.add_argument("--humaneval-limit", type=int, default=5, help="HumanEval problems the micro model samples")
    ap.add_argument("--skip-references", action="store_true")
    a = ap.parse_args()
    print(f"# {datetime.date.today()} | {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} | Python {platform.python_version()}")
    print("| programs | n | judged outside | passed, old way | passed, judged | verdicts differ | rewards differ | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    he, basics = humaneval(), python_basics(None)
    if not a.skip_references:
        compare("HumanEval references", [(p, p.reference) for p in he])
        compare("MBPP references", [(p, p.reference) for p in mbpp(str(MBPP))])
        compare("python-basics references", [(p, p.reference) for p in basics])
        import gzip
        import json

        from qlcode.builtin import DATASETS

        with gzip.open(DATASETS["python-basics"], "rt") as f:
            hidden = {r["task_id"]: "\n".join(r["hidden_tests"]) for r in map(json.loads, f) if "hidden_tests" in r}
        compare("python-basics references, hidden tests",
                [(Problem(p.task_id, p.prompt, p.reference, hidden[p.task_id], True, entry_point=p.entry_point), p.reference)
                 for p in basics if p.task_id in hidden])

    from qlcode.execution.generate import sample
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    loaded = load_model("builtin:micro-codellama", None, Quantization(bits=None))
    chosen = python_basics(None if a.split == "all" else a.split)
    compare(f"micro model on python-basics ({a.split}), {a.samples} samples each",
            [(p, c) for p in chosen for c in sample(loaded.model, loaded.tokenizer, p, False, a.samples, 1.0, 16)])
    compare(f"micro model on HumanEval[:{a.humaneval_limit}], 2 samples each",
            [(p, c) for p in he[:a.humaneval_limit] for c in sample(loaded.model, loaded.tokenizer, p, False, 2, 0.8, 48)])


if __name__ == "__main__":
    main()
