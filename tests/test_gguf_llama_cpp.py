"""k-quant exports and `eval --gguf`: the quantize type table and the argument errors without
llama.cpp; with llama-cpp-python installed, k-quant files read back and run, and pass@k of a GGUF
file answers as transformers does on the same weights."""

from __future__ import annotations

import importlib.util
import json

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qlcode.builtin import MODELS
from qlcode.cli import app
from qlcode.export.quantize import KQUANTS

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is an optional extra (pip install 'qlcode[llama-cpp]'), "
                                                               "not in the dev extra: building it takes tens of minutes")
MICRO = str(MODELS["micro-codellama"])


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def test_kquant_types_are_llama_cpps_file_types():
    assert KQUANTS == {k: gguf.LlamaFileType[f"MOSTLY_{k.upper()}"].value for k in ("q4_k_m", "q5_k_m", "q6_k")}


def test_without_llama_cpp_kquants_and_eval_gguf_name_the_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    res = _cli("export", MICRO, "--type", "q4_k_m", "--out", str(tmp_path / "m.gguf"))
    assert res.exit_code == 2
    assert ("error: --type q4_k_m: k-quants are made by llama.cpp's quantizer: pip install 'qlcode[llama-cpp]' "
            "(it builds llama.cpp, minutes), or export --type f16 or q8_0") in res.output
    assert list(tmp_path.iterdir()) == []  # nothing written
    res = _cli("eval", "--bench", "python-basics", "--gguf", str(tmp_path / "m.gguf"))
    assert res.exit_code == 2
    assert "error: --gguf runs the file with llama.cpp: pip install 'qlcode[llama-cpp]' (it builds llama.cpp, minutes)" in res.output


def test_export_and_eval_argument_errors(tmp_path):
    res = _cli("export", MICRO, "--type", "q4_0")
    assert res.exit_code == 2 and "error: --type is one of f16, q8_0, q4_k_m, q5_k_m, q6_k, not 'q4_0'" in res.output
    res = _cli("eval", "--bench", "python-basics", "--gguf", str(tmp_path / "m.gguf"), "--model", MICRO)
    assert res.exit_code == 2 and "error: --samples and --gguf score one source alone: give either without --model, --adapter or --solutions" in res.output


@needs_llama_cpp
def test_a_missing_gguf_file_is_named(tmp_path):
    res = _cli("eval", "--bench", "python-basics", "--gguf", str(tmp_path / "none.gguf"))
    assert res.exit_code == 2 and f"error: --gguf: no such file '{tmp_path / 'none.gguf'}' (qlcode export MODEL --type TYPE writes one)" in res.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The micro model as f16, q8_0 and q4_k_m GGUF files, through the CLI (each with its Modelfile)."""
    out = tmp_path_factory.mktemp("gguf")
    for kind in ("f16", "q8_0", "q4_k_m"):
        res = _cli("export", MICRO, "--type", kind, "--out", str(out / f"micro-{kind}.gguf"))
        assert res.exit_code == 0, res.output
    return out


@needs_llama_cpp
def test_a_kquant_file_reads_back_and_runs_in_llama_cpp(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlcode.execution.engines.llama_cpp import load_gguf

    r = gguf.GGUFReader(exported / "micro-q4_k_m.gguf")
    assert r.fields["general.file_type"].contents() == KQUANTS["q4_k_m"]
    kinds = {t.tensor_type.name for t in r.tensors}
    assert {"Q4_K", "Q6_K"} <= kinds <= {"Q4_K", "Q6_K", "F32"}  # _m: some tensors get 6 bits; norms stay F32
    assert (exported / "micro-q4_k_m.Modelfile").read_text().splitlines()[1] == "FROM ./micro-q4_k_m.gguf"
    errors = {}
    for kind in ("q8_0", "q4_k_m"):
        reader = gguf.GGUFReader(exported / f"micro-{kind}.gguf")
        ref = {t.name: t for t in gguf.GGUFReader(exported / "micro-f16.gguf").tensors}
        errors[kind] = max(float(np.abs(gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
                                        - gguf.quants.dequantize(ref[t.name].data, ref[t.name].tensor_type).reshape(-1)).max())
                           for t in reader.tensors)
    assert 0 < errors["q8_0"] < errors["q4_k_m"] < 16 * errors["q8_0"]  # fewer bits, more error, same order
    tok = AutoTokenizer.from_pretrained(MICRO)
    ids = tok("def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return")["input_ids"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(MICRO, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    for kind, top1 in (("f16", 1.0), ("q4_k_m", 0.8)):
        llm = load_gguf(exported / f"micro-{kind}.gguf", n_ctx=64, logits_all=True)
        assert llm.tokenize(tok.decode(ids[1:]).encode(), add_bos=True) == ids  # llama.cpp's own tokens are the same
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        if kind == "f16":  # f16 weights: logits within 0.05 of fp32 (0.0055 measured; threads and CPUs round differently)
            assert np.abs(got - want).max() < 0.05
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= top1


@needs_llama_cpp
def test_eval_gguf_answers_as_transformers_does(exported, tmp_path):
    """Greedy answers from the f16 file equal transformers' on the same weights (llama.cpp's tokens, prompt and cut as qlcode's)."""
    common = ["eval", "--bench", "python-basics", "--temperature", "0", "--max-new-tokens", "16", "--limit", "6"]
    res = _cli(*common, "--gguf", str(exported / "micro-f16.gguf"), "--out", str(tmp_path / "gguf"))
    assert res.exit_code == 0, res.output
    res = _cli(*common, "--model", MICRO, "--bits", "none", "--out", str(tmp_path / "hf"))
    assert res.exit_code == 0, res.output
    read = lambda d: [json.loads(line)["completions"][0] for line in (tmp_path / d / "results.jsonl").read_text().splitlines()]  # noqa: E731
    gguf_answers, hf_answers = read("gguf"), read("hf")
    # f16 rounding may flip a near-tie between two tokens on another CPU: most answers must agree
    assert sum(a == b for a, b in zip(gguf_answers, hf_answers)) >= 5, (gguf_answers, hf_answers)
    summary = json.loads((tmp_path / "gguf" / "summary.json").read_text())
    assert summary["model"] == str(exported / "micro-f16.gguf") and summary["label"] == "gguf" and summary["problems"] == 6


# --- every family's export, run by llama.cpp -------------------------------------------------------
# A tiny model of each family with its real tokenizer (llama.cpp tokenizes by the file's pre-tokenizer name)
# and its Hub vocab_size and tying (conftest.real_vocab_model). StarCoder2's window is 4096 as on the Hub:
# llama.cpp runs starcoder2 with full attention (it reads no sliding window for it), so past the window its
# logits leave transformers' (README: GGUF); the prompt is shorter. It has no " < " before a digit (" < 2"):
# there llama.cpp's deepseek-coder pre-tokenizer (DeepSeek's split list alone) makes one token and tests/data's
# rebuilt DeepSeek-Coder tokenizer (digits, then GPT-2's split) two; llama.cpp's 46 tests pass with both.
PROMPT = "def fibonacci(n: int) -> int:\n    if n in (0, 1):\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
# against transformers in fp32: (max |logit difference|, mean |logit difference|, top-1 agreement). f16 rounds
# every weight (relative 2^-11); q8_0 rounds each block of 32 weights to 8 bits and llama.cpp rounds the
# activations it multiplies them with to 8 bits too. Measured (benchmarks/gguf_llama_cpp.py --families, in
# BENCHMARKS.md): f16 max 0.018-0.028, mean 0.002, top-1 100%; q8_0 max 0.47-0.57, mean 0.04-0.05, top-1
# 84-95%; on logits of standard deviation 1.6.
TOLERANCE = {"f16": (0.05, 0.005, 0.95), "q8_0": (1.0, 0.1, 0.7)}


@pytest.fixture(scope="module")
def real_vocab_models(tmp_path_factory) -> dict:
    from conftest import REAL_VOCAB, real_vocab_model

    return {family: real_vocab_model(family, tmp_path_factory.mktemp(f"real-{family}")) for family in REAL_VOCAB}


@needs_llama_cpp
@pytest.mark.parametrize("family", ["codellama", "qwen2-coder", "deepseek-coder", "starcoder2"])
def test_llama_cpp_runs_every_familys_export_as_transformers_does(family, real_vocab_models, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from qlcode.execution.engines.llama_cpp import load_gguf

    model_dir = real_vocab_models[family]
    ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]  # with bos where the family adds it
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(want).max() > 1.0  # logits large enough for the tolerance to bite
    for kind, (most, mean, top1) in TOLERANCE.items():
        path = tmp_path / f"{family}-{kind}.gguf"
        res = _cli("export", str(model_dir), "--type", kind, "--out", str(path))
        assert res.exit_code == 0, res.output
        llm = load_gguf(path, n_ctx=128, logits_all=True)
        assert llm.n_vocab() == AutoConfig.from_pretrained(model_dir).vocab_size  # every row a token
        assert llm.tokenize(PROMPT.encode()) == ids  # llama.cpp's tokens (and bos policy) from the file's vocabulary
        # and llama.cpp's own 46 tokenizer tests of the family's vocabulary (shipped beside the tokenizer)
        tests = next(model_dir.glob("ggml-vocab-*.gguf.inp"))
        texts = tests.read_text().split("\n__ggml_vocab_test__\n")[:-1]
        expected = [[int(t) for t in line.split()] for line in tests.with_suffix(".out").read_text().splitlines()]
        assert [llm.tokenize(t.encode(), add_bos=False) for t in texts] == expected
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        diff = np.abs(got - want)
        assert diff.max() < most and diff.mean() < mean, (kind, diff.max(), diff.mean())
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= top1
