"""An execution reward for RL on code (GRPO): the share of a problem's test cases a completion passes.

Each assert of a problem's tests is a case. The sandbox runs the completion's program, then each
case on its own (an exception fails that case only), and reports per-case results through the
harness's end-of-run record: a program that exits early (sys.exit, os._exit, SystemExit, an atexit
hook), crashes, runs out of time or does not parse gets 0, whatever its exit code.
"""

from __future__ import annotations

import ast

from qlcode.execution.benchmarks import Problem
from qlcode.execution.sandbox import Limits, Result, run_many

def split_tests(test: str) -> tuple[str, list[str]]:
    """(setup, cases) of a test script: each statement that asserts is a case, the rest is setup.

    HumanEval's `def check(candidate): ...` followed by `check(f)` becomes `candidate = f` and the
    statements of check's body. A test with no assert at all (doctests) is one case.
    """
    module = ast.parse(test)
    setup: list[ast.stmt] = []
    cases: list[ast.stmt] = []
    checks = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef) and _asserts(node)}
    for node in module.body:
        call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
        if node in checks.values():
            continue
        if call and isinstance(call.func, ast.Name) and call.func.id in checks and len(call.args) == 1:
            check = checks[call.func.id]
            setup.append(ast.Assign([ast.Name(check.args.args[0].arg, ast.Store())], call.args[0], lineno=0))
            for inner in check.body:
                (cases if _asserts(inner) else setup).append(inner)
        else:
            (cases if _asserts(node) else setup).append(node)
    if not cases:
        return "", [test]
    return "\n".join(ast.unparse(s) for s in setup), [ast.unparse(c) for c in cases]


def _asserts(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def program_and_cases(problem: Problem, completion: str) -> tuple[str, list[str]]:
    """The program (solution, then the tests' setup) and the cases for a completion of `problem`."""
    setup, cases = split_tests(problem.test)
    code = problem.prompt + completion if problem.continues_prompt else completion
    return f"{problem.setup}{code}\n\n{setup}\n", cases


def case_reward(result: Result) -> float:
    """Share of cases passed; 0 without the harness's record (timeout, crash, early exit)."""
    if result.outcome == "timeout" or not result.cases:
        return 0.0
    return sum(result.cases) / len(result.cases)


def execution_reward(programs: list[str], cases: list[list[str]], limits: Limits = Limits(),
                     workers: int | None = None) -> list[float]:
    """Rewards in [0, 1] for programs[i] against cases[i], run in parallel in the sandbox."""
    return [case_reward(r) for r in run_many(programs, limits, workers, cases=cases)]
