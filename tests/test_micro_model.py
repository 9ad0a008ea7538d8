"""The embedded micro Code Llama: pretrained weights beat their initialisation; infilling from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.builtin.build.evaluate import first_statement, perplexity, pretrained_model
from qlcode.builtin.build.micro_codellama import untrained_model
from qlcode.builtin import stdlib_corpus
from qlcode.builtin.build.pretrain import documents

from conftest import REPO


def test_pretrained_weights_beat_the_untrained_model_on_held_out_code():
    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    docs = documents(held_out=True)[:24]
    trained, untrained = perplexity(pretrained_model(), tok, docs), perplexity(untrained_model(), tok, docs)
    assert untrained > 3000 and trained < untrained / 50, (trained, untrained)
    record = json.loads((MODELS["micro-codellama"] / "pretraining.json").read_text())
    assert record["tokens_seen"] > 5_000_000 and all(stage["fim_rate"] == 0.9 for stage in record["stages"])


def test_pretraining_corpus_adds_the_test_suite_without_the_tests_of_held_out_modules(tmp_path, monkeypatch):
    for f in ["os.py", "json/__init__.py", "json/decoder.py", "test/test_os.py", "test/test_json/test_decode.py",
              "test/test_string_literals.py", "test/test_stringprep.py", "unittest/test/test_case.py", "site-packages/x.py"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x = 1\n")
    monkeypatch.setattr(stdlib_corpus, "stdlib_root", lambda: tmp_path)
    modules = lambda **kw: [m for m, _ in stdlib_corpus.iter_sources(**kw)]  # noqa: E731
    assert modules(held_out=False) == ["os"]
    assert modules(held_out=False, tests=True) == ["os", "test.test_os", "test.test_stringprep", "unittest.test.test_case"]
    assert modules(held_out=True) == ["json", "json.decoder"]
    assert modules(held_out=True, tests=True) == ["json", "json.decoder", "test.test_json.test_decode",
                                                  "test.test_string_literals"]


def test_package_weights_stay_small():
    assert (MODELS["micro-codellama"] / "model.safetensors").stat().st_size < 25 * 2**20


def test_first_statement_cuts_at_the_next_top_level_line():
    assert first_statement("    return x\n\ndef g():\n    pass\n") == "    return x\n\n"


def _infill(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlcode.cli", "infill", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_qlcode_infill_fills_the_marker(tmp_path):
    src = tmp_path / "f.py"
    src.write_text("def square(x):\n    <FILL>\n\nprint(square(3))\n")
    res = _infill(str(src), "--max-new-tokens", "12")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("def square(x):\n    ") and res.stdout.endswith("\n\nprint(square(3))\n")
    assert "<FILL>" not in res.stdout
    res = _infill("-", stdin="x = 1\n")
    assert res.returncode == 2 and "put exactly one <FILL> where the missing code goes (found 0)" in res.stderr
    assert "Traceback" not in res.stderr
