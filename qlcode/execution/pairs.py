"""Training data from unit tests: sample answers, run their tests, keep what the tests say.

One sampling and execution pass feeds up to three outputs:
- DPO pairs: chosen = a sample that passes its tests, rejected = one that does not, with the reason
  it failed. Problems with no passing or no failing sample are reported, not dropped silently.
- KTO rows (TRL's unpaired preference format: prompt, completion, label): every distinct sample,
  labelled desirable when it passes, so problems whose samples all pass or all fail still count.
- SFT rows (prompt, completion): the passing samples, as the Code Llama paper built its
  self-instruct set (generate solutions, run the tests, keep what passes).
KTO and SFT rows are deduplicated per problem on normalized code (the syntax tree, so spacing and
comments do not make two answers different); their completion is the code that ran (a base
model's completion cut where it writes on, an Instruct model's whole answer).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.execution.benchmarks import Problem, mbpp
from qlcode.execution.completions import program
from qlcode.execution.engines import Engine
from qlcode.execution.generate import finish, prompt_text, sample_raw
from qlcode.execution.judge import run_tests_many
from qlcode.execution.sandbox import Limits, Result
from qlcode.files import jsonl_rows, write_text_atomic
from qlcode.progress import progress_bar

SOURCES = "mbpp-train, builtin:python-basics (its train split), or a .jsonl of {task_id, prompt, test or tests}"


@dataclass
class PairsReport:
    problems: int
    pairs: int = 0
    kto_desirable: int = 0
    kto_undesirable: int = 0
    sft: int = 0
    duplicates: int = 0  # samples left out of the KTO/SFT rows because an equal one was already kept
    blank: int = 0  # samples left out because the model wrote only whitespace
    no_passing: list[str] = field(default_factory=list)
    no_failing: list[str] = field(default_factory=list)


@dataclass
class Sampled:
    """One problem's samples as the model wrote them, each as the code it stands for, and what the
    sandbox said of that code."""

    problem: Problem
    raw: list[str]
    finished: list[str]  # generate.finish of each raw answer: what ran
    results: list[Result]


def _problem(row: dict, where: str) -> Problem:
    try:
        tests = row["test"] if "test" in row else "\n".join(row["tests"])
        return Problem(str(row["task_id"]), row["prompt"], row.get("reference", ""), tests,
                       bool(row.get("continues_prompt", True)), entry_point=row.get("entry_point") or "")
    except (KeyError, TypeError) as e:
        raise QlcodeError(f"{where}: a problem is a JSON object with task_id, prompt and test (or a tests list) ({e!r})") from None


def load_problems(source: str, data: str | None = None) -> list[Problem]:
    """Problems fit to train on: never a benchmark's test split, never a held-out split."""
    if source == "mbpp-train":
        return mbpp(data, split=(601, 974))  # MBPP task_id 601-974
    if source.startswith("builtin:"):
        from qlcode.builtin import dataset_path

        path = dataset_path(source)
        rows = list(jsonl_rows(Path(path)))
        if not all("split" in r and ("test" in r or "tests" in r) for _, r in rows):
            raise QlcodeError(f"--problems: {source} is not a problem set; use {SOURCES}")
        return [_problem(r, f"{path}:{n}") for n, r in rows if r["split"] == "train"]
    path = Path(source)
    if not path.is_file():
        raise QlcodeError(f"--problems: {source!r} is none of {SOURCES}")
    return [_problem(row, f"{path}:{n}") for n, row in jsonl_rows(path)]


def sample_and_run(engine: Engine, problems: list[Problem], instruct: bool, samples: int, temperature: float,
                   max_new_tokens: int = 384, limits: Limits = Limits(), workers: int = 2) -> Iterator[Sampled]:
    """Sample each problem and run every sample with its tests in the sandbox, with a progress bar."""
    progress, passed = progress_bar("sample + run", "{task.fields[passed]} passed"), 0
    with progress:
        task = progress.add_task("sample + run", total=len(problems), passed=0)
        for problem, raw in sample_raw(engine, problems, instruct, samples, temperature, max_new_tokens):
            finished = [finish(problem, t, instruct) for t in raw]
            results = run_tests_many([(problem.solution(f), problem.test, problem.names) for f in finished], limits, workers)
            passed += sum(r.outcome == "passed" for r in results)
            progress.update(task, advance=1, passed=passed)
            yield Sampled(problem, raw, finished, results)


def normalized(problem: Problem, completion: str) -> str:
    """The code a completion stands for, spacing and comments removed (its text when it does not parse)."""
    code = program(problem.prompt, completion, problem.continues_prompt)
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError):
        return " ".join(code.split())


def make_pairs(engine: Engine, problems: list[Problem], instruct: bool, samples: int, temperature: float,
               out: Path | None, max_new_tokens: int = 384, limits: Limits = Limits(), workers: int = 2,
               kto_out: Path | None = None, sft_out: Path | None = None) -> PairsReport:
    """Write DPO pairs to `out`, KTO rows to `kto_out` and SFT rows to `sft_out` (each optional)."""
    pairs, kto, sft, report = [], [], [], PairsReport(len(problems))
    for s in sample_and_run(engine, problems, instruct, samples, temperature, max_new_tokens, limits, workers):
        prompt = prompt_text(s.problem, instruct)
        passed = [r.outcome == "passed" for r in s.results]
        # an answer of nothing but whitespace trains nothing (the row formats refuse it): it is left out
        written = [bool(f.strip()) for f in s.finished]
        if not any(passed):
            report.no_passing.append(s.problem.task_id)
        elif all(passed):
            report.no_failing.append(s.problem.task_id)
        elif any(w and not ok for w, ok in zip(written, passed)):
            chosen = s.raw[passed.index(True)]
            i = next(i for i, (w, ok) in enumerate(zip(written, passed)) if w and not ok)
            pairs.append({"task_id": s.problem.task_id, "prompt": prompt, "chosen": chosen, "rejected": s.raw[i],
                          "rejected_outcome": s.results[i].outcome, "rejected_error": s.results[i].error_type})
        seen: set[tuple[str, bool]] = set()
        for raw, finished, ok, result, w in zip(s.raw, s.finished, passed, s.results, written):
            if not w:
                report.blank += 1
                continue
            completion = raw.strip() + "\n" if instruct else finished
            key = (normalized(s.problem, finished), ok)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            kto.append({"task_id": s.problem.task_id, "prompt": prompt, "completion": completion, "label": ok,
                        "outcome": result.outcome, "error": result.error_type})
            if ok:
                sft.append({"task_id": s.problem.task_id, "prompt": prompt, "completion": completion})
    report.pairs, report.sft = len(pairs), len(sft)
    report.kto_desirable = sum(r["label"] for r in kto)
    report.kto_undesirable = len(kto) - report.kto_desirable
    for path, rows in ((out, pairs), (kto_out, kto), (sft_out, sft)):
        if path is not None:
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return report
