"""One rule from a model's answer to the program it stands for, the same for every caller:
evaluation (generate.finish + Problem.solution), preference pairs, the GRPO reward and the playground."""

from __future__ import annotations

import pytest

from qlcode.execution.benchmarks import Problem, humaneval
from qlcode.execution.completions import INSTRUCT_ASK, continues, to_program
from qlcode.execution.generate import finish
from qlcode.execution.sandbox import Limits
from qlcode.methods.grpo import ExecutionReward, _program
from qlcode.ui.prompts import Prompt

LIMITS = Limits(timeout_s=4, cpu_s=4, memory_mb=512)
HUMANEVAL_38 = next(p for p in humaneval() if p.task_id == "HumanEval/38")  # a helper above the stub
FENCED = "Here it is:\n```python\n{code}```\nIt adds the numbers."

# (prompt, raw answer, instruct, the program it stands for)
SHAPES = {
    "bare signature": ("def add(a, b):\n", "    return a + b\n\ndef test():\n    pass\n", False,
                       "def add(a, b):\n    return a + b\n"),
    "signature and docstring": ('def add(a, b):\n    """Sum."""\n', "    return a + b\n# the model writes on\n", False,
                                'def add(a, b):\n    """Sum."""\n    return a + b\n'),
    "one line after return": ('def add(a, b):\n    """Sum."""\n    return', " a + b\n    )( more", False,
                              'def add(a, b):\n    """Sum."""\n    return a + b\n'),
    "HumanEval stub": (HUMANEVAL_38.prompt, HUMANEVAL_38.reference + "\n\nprint(decode_cyclic('abc'))", False,
                       HUMANEVAL_38.prompt + HUMANEVAL_38.reference.rstrip() + "\n"),
    "MBPP text": ('"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n',
                  "def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n", False,
                  '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\ndef add(a, b):\n    return a + b\n'),
    "words, not code": ("Write a function add(a, b) that returns their sum.", "def add(a, b):\n    return a + b\n", False,
                        "def add(a, b):\n    return a + b\n"),
    "Instruct, fenced": ("def add(a, b):\n", FENCED.format(code="def add(a, b):\n    return a + b\n"), True,
                         "def add(a, b):\n\ndef add(a, b):\n    return a + b\n"),
    "Instruct, no fence": ("def add(a, b):\n", "def add(a, b):\n    return a + b\n", True,
                           "def add(a, b):\n\ndef add(a, b):\n    return a + b\n"),
    "Instruct, words": ("Write add(a, b).", FENCED.format(code="def add(a, b):\n    return a + b\n"), True,
                        "def add(a, b):\n    return a + b\n"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_caller_makes_the_same_program(shape):
    prompt, answer, instruct, expected = SHAPES[shape]
    assert to_program(prompt, answer, instruct) == expected
    problem = Problem("t/0", prompt, "", "assert True", continues(prompt))
    assert problem.solution(finish(problem, answer, instruct)) == expected  # qlcode eval, pairs, pass@1 in training
    grpo_prompt = [{"role": "user", "content": INSTRUCT_ASK + prompt}] if instruct else prompt
    assert _program(grpo_prompt, answer, instruct) == expected  # the GRPO reward
    if instruct and not continues(prompt):
        assert Prompt("chat", messages=({"role": "user", "content": prompt},)).program(answer) == expected
    elif not instruct and continues(prompt):  # complete mode continues whatever text it is given
        assert Prompt("complete", text=prompt).program(answer) == expected  # the playground


def test_which_prompts_are_continued():
    assert continues("def add(a, b):\n") and continues("class A:\n    def method(self):") and continues(HUMANEVAL_38.prompt)
    assert continues('"""\nText.\n"""\n') and continues("def f():\n    return")
    assert not continues("Write a function.") and not continues("") and not continues("def f(:\n")


def test_a_bare_signature_scores_as_reward_like_eval_scores_it():
    """The reward used to decide with ast.parse(prompt) and scored a correct body under a bare signature 0."""
    tests = "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    prompt = "def add(a, b):\n"
    answers = ["    return a + b\n", "    return a - b\n", "    return (\n"]
    problem = Problem("t/0", prompt, "", tests, True, entry_point="add")
    evaluated = [problem.run(finish(problem, a, False), LIMITS).outcome for a in answers]
    assert evaluated == ["passed", "failed", "error"]
    rewards = ExecutionReward(instruct=False, timeout_s=4)([prompt] * 3, answers, [tests] * 3, entry_point=["add"] * 3)
    assert rewards == [1.0, 0.5, 0.0]


def test_hidden_tests_are_logged_not_rewarded():
    """A completion that learned the visible asserts by heart passes them and fails the hidden ones."""
    prompt = 'def add(a, b):\n    """Sum."""\n'
    visible, hidden = "assert add(1, 2) == 3\nassert add(0, 0) == 0", "assert add(5, 5) == 10\nassert add(-1, 1) == 0"
    by_heart = "    return {(1, 2): 3, (0, 0): 0}.get((a, b), 1)\n"
    logged: dict[str, float] = {}
    reward = ExecutionReward(instruct=False, timeout_s=4)
    rewards = reward([prompt] * 2, ["    return a + b\n", by_heart], [visible] * 2, log_metric=logged.__setitem__,
                     entry_point=["add"] * 2, hidden_test=[hidden] * 2)
    assert rewards == [1.0, 1.0]
    assert logged["reward/visible_pass"] == 1.0 and logged["reward/hidden_pass"] == 0.5
    assert logged["judged_outside"] == 1.0
    logged.clear()
    reward([prompt], [by_heart], [visible], log_metric=logged.__setitem__, hidden_test=[""])
    assert "reward/hidden_pass" not in logged  # no hidden tests in the batch: nothing to compare


def test_the_hidden_gap_reaches_metrics_jsonl():
    from qlcode.runs import metrics_row

    logs = {"reward/visible_pass": 1.0, "reward/hidden_pass": 0.5, "judged_outside": 1.0, "pass_rate": 1.0}
    assert metrics_row(3, logs) == {"step": 3, **logs}
