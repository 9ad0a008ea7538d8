"""Preference pairs from unit tests: sample, execute, pair a passing answer with a failing one.

This is how the Code Llama paper built its self-instruct data (generate solutions, run the tests,
keep what passes), turned into DPO data: chosen = a sample that passes its tests, rejected = one
that does not, with the reason it failed. Problems with no passing or no failing sample are
reported, not dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qlcode.progress import progress_bar
from qlcode.errors import QlcodeError
from qlcode.execution.benchmarks import Problem, mbpp
from qlcode.execution.generate import finish, prompt_text, sample_raw
from qlcode.execution.sandbox import Limits, run_many
from qlcode.files import write_text_atomic


@dataclass
class PairsReport:
    pairs: int
    problems: int
    no_passing: list[str] = field(default_factory=list)
    no_failing: list[str] = field(default_factory=list)


def load_problems(source: str, data: str | None = None) -> list[Problem]:
    """mbpp-train (MBPP task_id 601-974, fit to train on), or a jsonl of {task_id, prompt, test}."""
    if source == "mbpp-train":
        return [p for p in mbpp(data, split=(601, 974))]
    path = Path(source)
    if not path.is_file():
        raise QlcodeError(f"--problems: {source!r} is neither mbpp-train nor a .jsonl file of {{task_id, prompt, test}}")
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problems.append(Problem(str(row["task_id"]), row["prompt"], row.get("reference", ""), row["test"],
                                    bool(row.get("continues_prompt", True))))
        except (json.JSONDecodeError, KeyError) as e:
            raise QlcodeError(f"{path}:{n}: a problem is a JSON object with task_id, prompt and test ({e})") from None
    return problems


def make_pairs(model, tokenizer, problems: list[Problem], instruct: bool, samples: int, temperature: float, out: Path,
               max_new_tokens: int = 384, limits: Limits = Limits(), workers: int = 2) -> PairsReport:
    rows, report = [], PairsReport(0, len(problems))
    progress = progress_bar("pairs", "{task.fields[pairs]} pairs")
    with progress:
        task = progress.add_task("pairs", total=len(problems), pairs=0)
        for i, problem in enumerate(problems):
            raw = sample_raw(model, tokenizer, problem, instruct, samples, temperature, max_new_tokens, seed=i)
            results = run_many([problem.program(finish(problem, t, instruct)) for t in raw], limits, workers)
            passing = [t for t, r in zip(raw, results) if r.outcome == "passed"]
            failing = [(t, r) for t, r in zip(raw, results) if r.outcome != "passed"]
            if not passing:
                report.no_passing.append(problem.task_id)
            elif not failing:
                report.no_failing.append(problem.task_id)
            else:
                text, why = failing[0]
                rows.append({"task_id": problem.task_id, "prompt": prompt_text(problem, instruct), "chosen": passing[0],
                             "rejected": text, "rejected_outcome": why.outcome, "rejected_error": why.error_type})
            progress.update(task, advance=1, pairs=len(rows))
    report.pairs = len(rows)
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    return report
