"""Execute completions for benchmark problems in the sandbox and score them with pass@k."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from qlcode.progress import progress_bar
from qlcode.execution.benchmarks import Problem
from qlcode.execution.passk import pass_at_k
from qlcode.execution.sandbox import Limits, Result, run
from qlcode.files import write_text_atomic


@dataclass
class ProblemResult:
    task_id: str
    completions: list[str]
    outcomes: list[str]
    error_types: list[str | None]

    @property
    def passed(self) -> int:
        return self.outcomes.count("passed")


def execute(problems: list[Problem], completions: Callable[[Problem], list[str]], limits: Limits = Limits(),
            workers: int = 2, show_progress: bool = True) -> list[ProblemResult]:
    """Run every completion of every problem in the sandbox, with a progress bar (off inside training's)."""
    results = []
    progress = progress_bar("execute", "{task.fields[passed]} passed", show=show_progress)
    with progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task("execute", total=len(problems), passed=0)
        for problem in problems:
            texts = completions(problem)
            runs: list[Result] = list(pool.map(lambda c: run(problem.program(c), limits), texts))
            results.append(ProblemResult(problem.task_id, texts, [r.outcome for r in runs], [r.error_type for r in runs]))
            progress.update(task, advance=1, passed=sum(r.passed > 0 for r in results))
    return results


def summarize(results: list[ProblemResult], ks: list[int]) -> dict[str, float]:
    n = min(len(r.outcomes) for r in results)
    return {f"pass@{k}": sum(pass_at_k(len(r.outcomes), r.passed, k) for r in results) / len(results)
            for k in ks if k <= n}


def write(out: Path, results: list[ProblemResult], summary: dict) -> None:
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in results))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
