"""Decontamination against HumanEval and MBPP by 13-gram overlap."""

from __future__ import annotations

import subprocess
import sys

from qlcode.data.decontaminate import index, ngrams, overlaps
from qlcode.execution.benchmarks import humaneval
from qlcode.train import build_trainer

from conftest import REPO, make_recipe, write_jsonl
from test_eval import MBPP_COPY
from test_train import ROWS


def test_ngrams_ignore_whitespace():
    a = ngrams("def f(x):\n    return x + 1  # one more than x, always and forever and ever\n")
    b = ngrams("def  f( x ):  return x+1 # one more than x , always and forever and ever")
    assert a == b and len(a) > 0


def _contaminated_rows():
    he = humaneval()[3]
    leaked = {"instruction": "Solve it.", "input": "", "output": "# copied\n" + he.prompt + he.reference}
    return ROWS[:10] + [leaked], he.task_id


def test_copied_benchmark_solutions_are_found_and_dropped(tmp_path, tiny_base):
    rows, task_id = _contaminated_rows()
    grams = index(["humaneval", f"mbpp:{MBPP_COPY}"])
    from datasets import Dataset

    assert overlaps(Dataset.from_list(rows), grams) == [(10, task_id)]
    recipe = make_recipe(tmp_path, tiny_base, write_jsonl(tmp_path / "rows.jsonl", rows),
                         data={"validation": 0, "decontaminate": ["humaneval"]})
    trainer, _ = build_trainer(recipe)
    assert len(trainer.train_dataset) == 10


def test_mbpp_problems_are_found():
    import json

    row = json.loads(MBPP_COPY.read_text().splitlines()[20])
    grams = index([f"mbpp:{MBPP_COPY}"])
    from datasets import Dataset

    hit = overlaps(Dataset.from_list([{"text": row["code"] + "\n" + row["test_list"][0]}]), grams)
    assert hit and hit[0][1] == f"MBPP/{row['task_id']}"


def test_data_check_reports_overlap(tmp_path):
    rows, task_id = _contaminated_rows()
    f = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{base: builtin:micro-codellama}}\ndata:\n  datasets: [{{source: {f}, format: alpaca}}]\n  validation: 0\n")
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "data", "check", str(recipe), "--against", "humaneval"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert f"│ train │ 11 │ 1 │ 10: {task_id} │" in out
    assert "data.decontaminate: [humaneval]" in out
