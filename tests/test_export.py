"""qlcode merge: full-precision, shard-by-shard merging, proven against base + adapter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from qlcode.errors import QlcodeError
from qlcode.export.merge import PROBES, merge
from qlcode.train import train

from conftest import REPO, make_recipe, write_jsonl
from test_train import ROWS


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base):
    """A tiny adapter trained enough to change the model; its base saved in 3 shards."""
    tmp = tmp_path_factory.mktemp("merge")
    sharded = tmp / "sharded-base"
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(sharded, max_shard_size="400KB")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(sharded)
    rows = write_jsonl(tmp / "rows.jsonl", ROWS)
    recipe = make_recipe(tmp, sharded, rows, train={"max_steps": 8, "learning_rate": 2e-2}, data={"validation": 0})
    train(recipe)
    return tmp / "run", sharded


def _logits(model, tok) -> torch.Tensor:
    tok.pad_token = tok.pad_token or tok.unk_token
    batch = tok(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits * batch["attention_mask"][..., None]


def test_fp32_merge_matches_base_plus_adapter(tmp_path, trained):
    adapter, base = trained
    assert len(list(base.glob("model-*.safetensors"))) >= 2, "the base is sharded"
    report = merge(adapter, tmp_path / "merged", dtype="fp32")
    assert report.max_logit_diff < 1e-5 and report.top1_agreement == 1.0 and report.shards >= 2
    out = tmp_path / "merged"
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        assert (out / name).is_file(), name
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(out)
    want, got = _logits(ref, tok), _logits(merged, tok)
    assert (got - want).abs().max() < 1e-5
    with ref.disable_adapter():
        assert (_logits(ref, tok) - want).abs().max() > 1e-3, "the adapter matters, so the check is not vacuous"
    assert "max |logit difference|" in (out / "README.md").read_text()


def test_a_merge_that_fails_its_check_leaves_nothing(tmp_path, trained):
    adapter, _ = trained
    with pytest.raises(QlcodeError, match=r"merge check failed: max \|logit difference\| .* > tolerance 0 \(bf16\)"):
        merge(adapter, tmp_path / "merged", dtype="bf16", tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_bf16_merge_within_its_tolerance_and_cli(tmp_path, trained):
    adapter, _ = trained
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "merge", str(adapter), "--out", str(tmp_path / "m")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "top-1 agreement" in res.stdout and (tmp_path / "m" / "config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").dtype == torch.bfloat16
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "merge", str(adapter), "--out", str(tmp_path / "m")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "already exists" in res.stderr and "Traceback" not in res.stderr


def test_adapters_list_shows_finished_and_unfinished_runs(tmp_path, trained):
    import shutil

    from qlcode.runs import list_runs

    adapter, base = trained
    shutil.copytree(adapter, tmp_path / "done")
    (tmp_path / "half").mkdir()
    shutil.copy(adapter / "recipe.yaml", tmp_path / "half" / "recipe.yaml")
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert runs["done"].status == "finished" and runs["done"].steps == 8 and runs["done"].base == str(base)
    assert runs["done"].eval_loss_before is None  # validation 0: no eval
    assert runs["half"].status == "unfinished" and runs["half"].steps is None
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "adapters", "list", "--root", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0 and "done" in res.stdout and "unfinished" in res.stdout


@pytest.fixture(scope="module")
def merged_fp32(tmp_path_factory, trained):
    out = tmp_path_factory.mktemp("merged") / "m"
    merge(trained[0], out, dtype="fp32")
    return out


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_gguf_round_trip(tmp_path, merged_fp32, kind):
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from qlcode.export.gguf_export import export_gguf, gguf_name, permute

    out = tmp_path / f"m-{kind}.gguf"
    report = export_gguf(merged_fp32, out, kind)
    assert out.is_file() and not (tmp_path / f".m-{kind}.gguf.tmp").exists()
    r = gguf.GGUFReader(out)
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f("general.architecture") == "llama" and f("llama.rope.freq_base") == 1e6
    assert f("llama.attention.head_count") == 2 and f("llama.block_count") == 2
    tok = AutoTokenizer.from_pretrained(merged_fp32)
    tokens = f("tokenizer.ggml.tokens")
    assert len(tokens) == len(tok) and tokens[:7] == ["<unk>", "<s>", "</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"]
    assert (f("tokenizer.ggml.bos_token_id"), f("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert [f(f"tokenizer.ggml.{k}") for k in ("fim_pre_token_id", "fim_suf_token_id", "fim_mid_token_id", "eot_token_id")] == [3, 4, 5, 6]
    assert "[INST]" in f("tokenizer.chat_template")
    weights = {k: v for p in merged_fp32.glob("model-*.safetensors") for k, v in load_file(p).items()}
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == len(weights) == report.tensors
    for name, w in weights.items():
        t = tensors[gguf_name(name)]
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = permute(w, 2)  # 2 heads, 2 kv heads
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(got, w.numpy())
        elif kind == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            assert np.array_equal(got, w.numpy().astype(np.float16))  # every tensor exact in f16
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            scale = np.abs(w.numpy()).max()
            # half a q8 step, plus the rounding of each block scale to f16 (127 * 2**-11 of a step)
            assert np.abs(got - w.numpy()).max() <= scale / 127 * 0.57
    assert report.max_abs_error == (0.0 if kind == "f16" else report.max_abs_error)


def test_qk_permutation_is_llama_cpps():
    from qlcode.export.gguf_export import permute

    # head_dim 4: HF rows [r0 r1 | r2 r3] (rotate-half pairs (0,2), (1,3)) -> interleaved [r0 r2 r1 r3]
    w = torch.arange(8.0).reshape(4, 2)
    assert permute(w, 1).tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]


def test_export_refuses_what_it_cannot_write(tmp_path, trained):
    adapter, _ = trained
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "export", str(adapter), "--format", "gguf"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no config.json; export a merged model directory (qlcode merge ADAPTER --out DIR)" in res.stderr
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "export", str(adapter), "--type", "q4"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_merge_requantized_to_nf4_loads_and_reports_its_cost(tmp_path, trained):
    import bitsandbytes as bnb

    adapter, _ = trained
    report = merge(adapter, tmp_path / "q", dtype="fp32", quantize="nf4")
    assert report.max_logit_diff < 1e-5 and report.quantized == "nf4"
    assert 1e-3 < report.quantized_logit_diff < 5.0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q", device_map={"": "cpu"})
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    full = merge(adapter, tmp_path / "full", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(tmp_path / "q")
    gap = (_logits(model.eval(), tok) - _logits(AutoModelForCausalLM.from_pretrained(full.out).eval(), tok)).abs().max()
    # the reloaded model may take another bitsandbytes CPU kernel (bf16 GEMV), hence 1% rather than exact
    assert abs(gap.item() - report.quantized_logit_diff) < 0.01 * report.quantized_logit_diff
    assert "re-quantized to bitsandbytes nf4" in (tmp_path / "q" / "README.md").read_text()
    assert list(tmp_path.glob(".*")) == []


MEMORY_SETUP = r"""
import json, sys
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
from qlcode.builtin import MODELS

tmp = Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg)
model.save_pretrained(tmp / "base", max_shard_size="10MB")
tok.save_pretrained(tmp / "base")
get_peft_model(model, LoraConfig(r=8, target_modules="all-linear")).save_pretrained(tmp / "adapter")
tok.save_pretrained(tmp / "adapter")  # as qlcode train saves it beside the adapter
(tmp / "adapter" / "recipe.yaml").write_text(json.dumps({"model": {"base": str(tmp / "base")},
    "data": {"datasets": [{"source": "builtin:stdlib-python-instruct", "format": "alpaca"}]}, "output": {"name": "x"}}))
"""

MEMORY_MERGE = r"""
import json, sys, threading, time
from pathlib import Path
import qlcode.export.merge as m

tmp = Path(sys.argv[1])
m._check = lambda *a: (0.0, 1.0, None)  # measure the merge itself; the check holds one model at a time by design
m.lora_deltas(tmp / "adapter")  # imports and first reads out of the way
m.release_memory()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
baseline, peak, done = rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

t = threading.Thread(target=sample)
t.start()
m.merge(tmp / "adapter", tmp / "out", dtype="fp32")
done.set()
t.join()
shards = list((tmp / "base").glob("model-*.safetensors"))
print(json.dumps({"model": sum(p.stat().st_size for p in shards), "shard": max(p.stat().st_size for p in shards),
                  "growth": peak[0] - baseline, "shards": len(shards)}))
"""


def test_merge_memory_grows_with_a_shard_not_with_the_model(tmp_path):
    import json

    for script in (MEMORY_SETUP, MEMORY_MERGE):
        res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["shards"] >= 10 and r["growth"] > 0
    # the merge holds one shard read, its merged copy and its serialized bytes (about 3 shards) plus a fixed
    # overhead (allocator, adapter), not the 126 MB model
    assert r["growth"] < 3 * r["shard"] + 16 * 2**20 and r["growth"] < r["model"] / 3, r
