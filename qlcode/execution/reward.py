"""An execution reward for RL on code (GRPO): the share of a problem's test cases a completion passes.

Each assert of a problem's tests is a case, judged outside the sandbox where the test decomposes
(judge.py: the program only returns values, our process compares them), else inside (each assert
run after the program, caught on its own). A program that exits early (sys.exit, os._exit,
SystemExit, an atexit hook), crashes, runs out of time or does not parse gets 0, whatever its exit
code.
"""

from __future__ import annotations

from qlcode.execution.judge import run_tests_many
from qlcode.execution.sandbox import Limits, Result


def case_reward(result: Result) -> float:
    """Share of cases passed; 0 without the harness's record (timeout, crash, early exit)."""
    if result.outcome == "timeout" or not result.cases:
        return 0.0
    return sum(result.cases) / len(result.cases)


def execution_reward(jobs: list[tuple[str, str, frozenset[str]]], limits: Limits = Limits(),
                     workers: int | None = None) -> list[float]:
    """Rewards in [0, 1] for each (solution, test, the program's names: judge.program_names), run in
    parallel in the sandbox."""
    return [case_reward(r) for r in run_tests_many(jobs, limits, workers)]
