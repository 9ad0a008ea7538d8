"""problems: a coding problem and its tests, for training on rewards from running them (GRPO).

Fields: prompt; tests (a list of assert statements, MBPP's test_list) or test (test code; with
entry_point, HumanEval's check(candidate) function, called on it); optional entry_point, task_id
and hidden_tests (asserts like tests, never rewarded: GRPO logs the pass rate on them beside the
visible tests', a check for a policy learning the visible tests rather than the task). Rendered to TRL's prompt-only row kind: `prompt` (under instruct a user turn
asking as qlcode's evaluation does, else the text) plus `test`, code that raises when a solution
is wrong (run after it), `hidden_test` ("" when none), `entry_point` and `task_id`, kept for the
reward function.
Decontamination compares the prompt; there is nothing to infill.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from qlcode.data.formats.base import PROMPT_ONLY, DataFormat, text_field, user
from qlcode.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset



def parses(code: str, where: str, what: str) -> str:
    """Test code that Python can read: a test that cannot run would score every answer as wrong."""
    try:
        ast.parse(code)
    except SyntaxError as e:
        raise DataError(f"{where}: {what} is not valid Python ({e.msg}, line {e.lineno} of the test); fix the test") from None
    except ValueError as e:  # null bytes
        raise DataError(f"{where}: {what} is not valid Python ({e}); fix the test") from None
    return code


class Problems(DataFormat):
    name = "problems"
    required = ("prompt",)
    optional = ("tests", "test", "entry_point", "task_id", "hidden_tests")
    short = "prompt and tests"
    summary = "prompt, tests (a list of asserts) or test (test code), entry_point, task_id and hidden_tests (optional)"

    def kind(self, template: str) -> str:
        return PROMPT_ONLY

    def check_columns(self, present: set[str], key: str, source: str, column: dict[str, str], columns: list[str]) -> None:
        super().check_columns(present, key, source, column, columns)
        if not present & {"tests", "test"}:
            raise DataError(f"{key}: {source} has no column {column['tests']!r} (a list of asserts) or {column['test']!r} "
                            f"(test code) for problems (columns: {', '.join(columns)}); "
                            f"map one with {key}.columns: {{tests: COLUMN}} or {{test: COLUMN}}")

    def check_dataset(self, ds: Dataset, key: str, source: str) -> None:
        """MBPP's own file holds its test split too: only task_id 601-974 may train."""
        from qlcode.execution.benchmarks import MBPP_TRAIN_IDS

        if {"task_id", "test_list"} <= set(ds.column_names):
            early = next((i for i, t in enumerate(ds["task_id"]) if str(t).isdigit() and int(t) < MBPP_TRAIN_IDS[0]), None)
            if early is not None:
                raise DataError(f"{source} row {early}: MBPP task_id {ds[early]['task_id']} is in MBPP's evaluation splits (1-600); "
                                f"train on its train split with {key}.source: builtin:mbpp-train:{source}")

    def check(self, row: dict, where: str, column: dict[str, str], template: str) -> dict:
        text_field(row, "prompt", where, column)
        entry = row.get("entry_point") or ""
        if row.get("tests") is not None:
            tests = row["tests"]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
                raise DataError(f"{where}: tests ({column['tests']!r}) must be a non-empty list of assert statements, got {tests!r}")
            for i, t in enumerate(tests):
                parses(t, where, f"tests[{i}] ({column['tests']!r})")
            test = "\n".join(tests)
        else:
            test = parses(text_field(row, "test", where, column), where, f"test ({column['test']!r})")
            if entry:
                test = f"{test}\ncheck({entry})"
        hidden = row.get("hidden_tests")
        if hidden is not None and (not isinstance(hidden, list) or not all(isinstance(t, str) and t.strip() for t in hidden)):
            raise DataError(f"{where}: hidden_tests ({column['hidden_tests']!r}) must be a list of assert statements, got {hidden!r}")
        if not isinstance(entry, str):
            raise DataError(f"{where}: entry_point ({column['entry_point']!r}) must be a function name, got {entry!r}")
        task_id = row.get("task_id")
        return {"prompt": row["prompt"], "test": test, "hidden_test": "\n".join(hidden or []), "entry_point": entry,
                "task_id": "" if task_id is None else str(task_id)}

    def render(self, row: dict, template: str) -> dict:
        prompt = row["prompt"]
        if template == "instruct":
            from qlcode.execution.completions import INSTRUCT_ASK

            prompt = user(INSTRUCT_ASK + prompt)
        return {"prompt": prompt, "test": row["test"], "hidden_test": row.get("hidden_test", ""), "entry_point": row["entry_point"],
                "task_id": row["task_id"]}

    def contamination_text(self, row: dict) -> str:
        return row["prompt"]
