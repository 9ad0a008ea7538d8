"""builtin:python-basics: every reference passes its own asserts in the sandbox, wrong answers fail,
and the held-out split shares no task (in any naming) with the train split."""

from __future__ import annotations

import gzip
import json
from collections import Counter

from qlcode.builtin import DATASETS
from qlcode.builtin.build.python_basics import rows
from qlcode.execution.benchmarks import python_basics
from qlcode.execution.evaluate import execute


def shipped() -> list[dict]:
    with gzip.open(DATASETS["python-basics"], "rt") as f:
        return [json.loads(line) for line in f]


def test_the_shipped_file_is_what_the_builder_makes():
    assert shipped() == rows()


def test_every_reference_passes_its_tests_and_a_wrong_answer_fails():
    problems = python_basics(None)
    assert len(problems) == len(shipped()) >= 150
    results = execute(problems, lambda p: [p.reference, " 12345\n"], workers=2, show_progress=False)
    assert [r.task_id for r in results if r.outcomes[0] != "passed"] == []
    assert [r.task_id for r in results if r.outcomes[1] == "passed"] == []


def test_splits_are_disjoint_by_task_and_the_benchmark_is_the_held_out_split():
    data = shipped()
    train = [r for r in data if r["split"] == "train"]
    test = [r for r in data if r["split"] == "test"]
    assert len(train) + len(test) == len(data) and 0.15 < len(test) / len(data) < 0.25
    # a task's three namings share one split, and no held-out task has a naming in train
    assert not {r["task"] for r in train} & {r["task"] for r in test}
    assert sorted(Counter(r["task"] for r in data).values()) == [3] * (len(data) // 3)
    assert {p.task_id for p in python_basics()} == {r["task_id"] for r in test}
    for r in data:
        assert r["prompt"].startswith(f"def {r['entry_point']}(") and r["prompt"].endswith("    return")
        assert all(t.startswith(f"assert {r['entry_point']}(") for t in r["tests"])


def test_hidden_tests_pass_with_every_reference_and_differ_from_the_visible_ones():
    from qlcode.execution.judge import run_tests_many

    data = [r for r in shipped() if "hidden_tests" in r]
    assert len(data) == 150  # the 6 tasks without arguments (18 rows) have nothing more to ask
    assert all(set(r["hidden_tests"]).isdisjoint(r["tests"]) and len(r["hidden_tests"]) == 2 for r in data)
    problems = {p.task_id: p for p in python_basics(None)}
    jobs = [(problems[r["task_id"]].solution(r["reference"]), "\n".join(r["hidden_tests"]), problems[r["task_id"]].names)
            for r in data]
    results = run_tests_many(jobs, workers=2)
    assert [r["task_id"] for r, res in zip(data, results) if res.outcome != "passed"] == []
    assert {res.judged for res in results} == {"outside"}
