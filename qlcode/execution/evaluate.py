"""Execute completions for benchmark problems in the sandbox and score them with pass@k."""

from __future__ import annotations

import json
from collections.abc import Callable
import threading
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Run every completion of every problem in the sandbox, with a progress bar (off inside training's).

    A problem's programs run while the next problem's completions are generated; the bar advances
    as each problem's runs end.
    """
    progress = progress_bar("execute", "{task.fields[passed]} passed", show=show_progress)
    solved, lock = 0, threading.Lock()

    def finished(runs: list[Future], left: list[int]) -> None:
        nonlocal solved
        with lock:
            left[0] -= 1
            if left[0] == 0:  # the problem's last run
                solved += any(f.result().outcome == "passed" for f in runs)
                progress.update(task, advance=1, passed=solved)

    with progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task("execute", total=len(problems), passed=0)
        submitted = []
        for problem in problems:
            texts = completions(problem)
            runs = [pool.submit(run, problem.program(c), limits) for c in texts]
            left = [len(runs)]
            for f in runs:
                f.add_done_callback(lambda _, runs=runs, left=left: finished(runs, left))
            submitted.append((problem, texts, runs))
        results = []
        for problem, texts, runs in submitted:
            done: list[Result] = [f.result() for f in runs]
            results.append(ProblemResult(problem.task_id, texts, [r.outcome for r in done], [r.error_type for r in done]))
    return results


def summarize(results: list[ProblemResult], ks: list[int]) -> dict[str, float]:
    n = min(len(r.outcomes) for r in results)
    return {f"pass@{k}": sum(pass_at_k(len(r.outcomes), r.passed, k) for r in results) / len(results)
            for k in ks if k <= n}


def write(out: Path, results: list[ProblemResult], summary: dict) -> None:
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in results))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
