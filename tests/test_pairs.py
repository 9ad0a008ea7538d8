"""qlcode pairs: one sampling + execution pass writes DPO pairs, KTO rows and SFT rows, checked
against what the sandbox says of each sample."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from qlcode.errors import QlcodeError
from qlcode.execution.benchmarks import Problem
from qlcode.execution.pairs import load_problems, make_pairs, normalized
from qlcode.execution.sandbox import run_many

from conftest import REPO

# the sample lands inside a string and the test checks its length's parity: some pass, some fail
PARITY = [{"task_id": f"p{i}", "prompt": f"# problem {i}\ns = r'''", "test": "'''\nassert len(s) % 2 == 0"} for i in range(4)]
# the answer is the rest of a comment's line (a prompt ending at `return` is answered in one line): it always passes
ALWAYS = {"task_id": "always", "prompt": "x = 1  # return", "test": "assert x == 1"}
NEVER = {"task_id": "never", "prompt": "x = 1\n", "tests": ["assert x == 1", "assert False"]}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_pass_writes_dpo_pairs_kto_and_sft_rows_that_agree_with_the_sandbox(tmp_path):
    from conftest import make_recipe, write_jsonl
    from qlcode.train import train

    src = write_jsonl(tmp_path / "problems.jsonl", [*PARITY, ALWAYS, NEVER])
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "pairs", "--model", "builtin:micro-codellama",
                          "--problems", str(src), "--samples", "4", "--max-new-tokens", "12", "--out", str(tmp_path / "pairs.jsonl"),
                          "--kto-out", str(tmp_path / "kto.jsonl"), "--sft-out", str(tmp_path / "sft.jsonl")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    pairs, kto, sft = (read_jsonl(tmp_path / f) for f in ("pairs.jsonl", "kto.jsonl", "sft.jsonl"))

    # DPO pairs, as before: only problems with both a passing and a failing sample
    assert pairs and {r["task_id"] for r in pairs} <= {f"p{i}" for i in range(4)}
    for r in pairs:
        assert r["chosen"] != r["rejected"] and r["rejected_outcome"] == "failed" and r["rejected_error"] == "AssertionError"
        assert r["prompt"] == f"# problem {r['task_id'][1:]}\ns = r'''"

    # KTO: every problem counts, the all-passing and all-failing ones too; each label is the sandbox's verdict
    problems = {p.task_id: p for p in load_problems(str(src))}
    assert {r["task_id"] for r in kto} == set(problems)
    rerun = run_many([problems[r["task_id"]].program(r["completion"]) for r in kto], workers=2)
    assert [r["label"] for r in kto] == [x.outcome == "passed" for x in rerun]
    assert [r["outcome"] for r in kto] == [x.outcome for x in rerun]
    assert all(r["label"] for r in kto if r["task_id"] == "always")
    assert not any(r["label"] for r in kto if r["task_id"] == "never")
    # no two rows of a problem hold the same code with the same label
    keys = [(r["task_id"], normalized(problems[r["task_id"]], r["completion"]), r["label"]) for r in kto]
    assert len(keys) == len(set(keys))

    # SFT: exactly the passing KTO rows
    assert [(r["task_id"], r["prompt"], r["completion"]) for r in sft] == \
        [(r["task_id"], r["prompt"], r["completion"]) for r in kto if r["label"]]

    out = " ".join(res.stdout.split())
    no_pass = re.search(r"(\d+) problems had no passing sample: ([\w, ]+?)(?= \d+ problems|$)", out)
    no_fail = re.search(r"(\d+) problems had no failing sample: ([\w, ]+?)(?= \d+ problems|$)", out)
    assert no_pass and "never" in no_pass[2].split(", ") and int(no_pass[1]) == len(no_pass[2].split(", ")), out
    assert no_fail and "always" in no_fail[2].split(", "), out
    assert f"{len(pairs)} pairs from 6 problems" in out
    good = sum(r["label"] for r in kto)
    assert f"{len(kto)} KTO rows ({good} passing, {len(kto) - good} failing) written to" in out
    assert f"{len(sft)} SFT rows (passing samples) written to" in out
    dupes = re.search(r"(\d+) duplicate samples", out)
    blank = re.search(r"(\d+) samples of nothing but whitespace left out", out)
    assert len(kto) + sum(int(m[1]) for m in (dupes, blank) if m) == 6 * 4, out

    recipe = make_recipe(tmp_path, "builtin:micro-codellama", tmp_path / "pairs.jsonl", fmt="preference",
                         train={"method": "dpo", "max_steps": 2}, data={"template": "completion", "validation": 0})
    assert train(recipe).steps == 2


def test_identical_samples_are_kept_once(tmp_path):
    from qlcode.execution.engines.batched import TransformersEngine
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    loaded = load_model("builtin:micro-codellama", None, Quantization(bits=None))
    problems = [Problem("always", "s = r'''", "", "'''", True), Problem("never", "x = 1\n", "", "assert False", True)]
    # near-greedy: the 3 samples of a problem are the same text
    report = make_pairs(TransformersEngine(loaded.model, loaded.tokenizer), problems, False, 3, 1e-4, None, max_new_tokens=6,
                        kto_out=tmp_path / "kto.jsonl", sft_out=tmp_path / "sft.jsonl")
    kto, sft = read_jsonl(tmp_path / "kto.jsonl"), read_jsonl(tmp_path / "sft.jsonl")
    assert [(r["task_id"], r["label"]) for r in kto] == [("always", True), ("never", False)]
    assert [r["task_id"] for r in sft] == ["always"] and sft[0]["completion"] == kto[0]["completion"]
    assert (report.duplicates, report.kto_desirable, report.kto_undesirable, report.sft, report.pairs) == (4, 1, 1, 1, 0)
    assert not (tmp_path / "pairs.jsonl").exists()


def test_samples_of_only_whitespace_are_left_out_of_every_output(tmp_path, monkeypatch):
    import qlcode.execution.pairs as pairs_module
    from qlcode.data.formats import FORMATS

    # a prompt ending at `return` stops at the line's end: an empty line is a possible sample
    monkeypatch.setattr(pairs_module, "sample_raw", lambda engine, problems, *a, **k: ((p, [" x\n", "\n", "   \n", " y\n"]) for p in problems))
    problem = Problem("echo", "def echo(x):\n    return", "", "assert echo(1) == 1", True)
    report = make_pairs(None, [problem], False, 4, 1.0, tmp_path / "pairs.jsonl", kto_out=tmp_path / "kto.jsonl")
    kto, pairs = read_jsonl(tmp_path / "kto.jsonl"), read_jsonl(tmp_path / "pairs.jsonl")
    assert [(r["completion"], r["label"]) for r in kto] == [(" x\n", True), (" y\n", False)]
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [(" x\n", " y\n")]
    assert report.blank == 2
    column = {k: k for k in ("prompt", "completion", "label")}
    for n, row in enumerate(kto, 1):
        FORMATS["kto"].check(row, f"kto.jsonl row {n}", column, "completion")  # raises on a row the format refuses


def test_normalized_code_ignores_spacing_and_comments_but_not_meaning():
    p = Problem("t", "def f(a, b):\n    return", "", "", True)
    assert normalized(p, " a+b  # sum\n") == normalized(p, " (a + b)\n")
    assert normalized(p, " a + b\n") != normalized(p, " b + a\n")
    assert normalized(p, " a +\n") == normalized(p, " a  +\n")  # does not parse: compared by its words


def test_problem_sources_train_splits_only_and_bad_rows_name_file_and_line(tmp_path):
    basics = load_problems("builtin:python-basics")
    from qlcode.execution.benchmarks import python_basics

    held_out = {p.task_id for p in python_basics("test")}
    assert basics and held_out and not {p.task_id for p in basics} & held_out
    assert basics[0].test.count("assert ") >= 3 and basics[0].prompt.endswith("return")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PARITY[0]) + "\n\n" + json.dumps({"task_id": "x", "prompt": "y"}) + "\n")
    with pytest.raises(QlcodeError, match=rf"{re.escape(str(bad))}:3: a problem is a JSON object with task_id, prompt and test"):
        load_problems(str(bad))
    with pytest.raises(QlcodeError, match="builtin:stdlib-python-instruct is not a problem set"):
        load_problems("builtin:stdlib-python-instruct")
    with pytest.raises(QlcodeError, match="--problems: 'nope.jsonl' is none of mbpp-train, builtin:python-basics"):
        load_problems("nope.jsonl")


@pytest.mark.parametrize("args,message", [
    ([], "error: give at least one output: --out (DPO pairs), --kto-out (KTO rows) or --sft-out (SFT rows)"),
    (["--sft-out", "x.jsonl", "--temperature", "0"],
     "error: --temperature 0 is greedy: every sample would be the same; give a temperature > 0 or --samples 1"),
])
def test_pairs_bad_options_are_clear_errors(args, message):
    from typer.testing import CliRunner

    from qlcode.cli import app

    res = CliRunner().invoke(app, ["pairs", "--problems", "builtin:python-basics", "--model", "builtin:micro-codellama", *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
