"""The execution reward: the share of test cases passed, and 0 for every way of not running them."""

from __future__ import annotations

import pytest

from qlcode.execution.benchmarks import Problem
from qlcode.execution.judge import split_tests
from qlcode.execution.reward import execution_reward
from qlcode.execution.sandbox import Limits

LIMITS = Limits(timeout_s=10, cpu_s=2, memory_mb=512)  # wall: room for a loaded machine; the loop ends on CPU time
TEST = '''METADATA = {"author": "qlcode"}


def check(candidate):
    assert candidate(0) == 0
    assert candidate(1) == 1
    for n in range(2, 6):
        assert candidate(n) == candidate(n - 1) + candidate(n - 2)
    assert candidate(10) == 55

check(fib)
'''
PROBLEM = Problem("Test/0", 'def fib(n: int) -> int:\n    """The n-th Fibonacci number."""\n', "", TEST, True, entry_point="fib")
CORRECT = "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
COMPLETIONS = {
    "correct": (CORRECT, 1.0),
    "partly correct": ("    return n if n < 2 else 0\n", 0.5),  # the first two cases of four
    "wrong": ("    return -1\n", 0.0),
    "syntax error": ("    return (n\n", 0.0),
    "infinite loop": ("    while True:\n        pass\n", 0.0),
    # each exits with status 0 before or after the (failing) cases: trusting the exit code would give 1.0
    "sys.exit": ("    return -1\nimport sys\nsys.exit(0)\n", 0.0),
    "os._exit": ("    return -1\nimport os\nos._exit(0)\n", 0.0),
    "raise SystemExit": ("    return -1\nraise SystemExit\n", 0.0),
    "atexit os._exit": ("    return -1\nimport atexit, os\natexit.register(lambda: os._exit(0))\n", 0.0),
    "exit inside the function": ("    import sys\n    sys.exit(0)\n", 0.0),
}


def test_split_tests_makes_each_assert_a_case():
    setup, cases = split_tests(TEST)
    assert setup == "METADATA = {'author': 'qlcode'}\ncandidate = fib"
    assert cases == ["assert candidate(0) == 0", "assert candidate(1) == 1",
                     "for n in range(2, 6):\n    assert candidate(n) == candidate(n - 1) + candidate(n - 2)",
                     "assert candidate(10) == 55"]
    assert split_tests("import math\nassert f(1) == 2\nassert f(2) == 3") == ("import math", ["assert f(1) == 2", "assert f(2) == 3"])
    assert split_tests("import doctest\ndoctest.testmod()") == ("", ["import doctest\ndoctest.testmod()"])


def test_rewards_of_hand_written_completions():
    names = list(COMPLETIONS)
    jobs = [(PROBLEM.solution(COMPLETIONS[n][0]), PROBLEM.test, PROBLEM.names) for n in names]
    rewards = execution_reward(jobs, LIMITS, workers=2)
    assert dict(zip(names, rewards)) == {n: COMPLETIONS[n][1] for n in names}


@pytest.mark.parametrize("cheat", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_a_case_that_exits_scores_nothing_for_itself(cheat):
    solution = PROBLEM.solution("    return -1\n")
    assert execution_reward([(solution, f"{cheat}\n{TEST}", PROBLEM.names)], LIMITS) == [0.0]


def test_grpo_reward_scores_a_completion_of_return_up_to_its_line():
    from qlcode.methods.grpo import ExecutionReward

    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n    return'
    tests = "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    completions = [" a + b\n    )( the model writing on", " a - b\n", " a +"]
    assert ExecutionReward(instruct=False, timeout_s=10)([prompt] * 3, completions, [tests] * 3) == [1.0, 0.5, 0.0]
