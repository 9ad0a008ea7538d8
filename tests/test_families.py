"""The code model families end to end, each on a tiny model of its own architecture (conftest.family_bases):
resolution from config and tokenizer, SFT with infilling, `qlcode infill`, DPO/KTO/ORPO/GRPO, `qlcode eval`,
the playground, `qlcode merge` against base + adapter, GGUF export read back by `gguf` and by
transformers, the 4-bit kernels, `qlcode plan` offline, model cards and the older template name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from qlcode.data.fim import fim_ids, infill_prompt, part, with_infilling
from qlcode.families import FAMILIES, family_of_tokenizer, model_type_of
from qlcode.models import Quantization, load_base, load_tokenizer
from qlcode.recipe import FimSection
from qlcode.train import train

from conftest import make_recipe, write_jsonl

NAMES = list(FAMILIES)
PREFERENCE = [{"prompt": f"def f{i}():\n    return", "chosen": f" {i}\n", "rejected": " None\n"} for i in range(8)]
PROBLEMS = [{"prompt": f'def add{i}(a, b):\n    """Return a + b + {i}."""\n', "tests": [f"assert add{i}(1, 2) == {3 + i}"],
             "entry_point": f"add{i}"} for i in range(4)]


def fim_options(name: str) -> dict:
    return {"rate": 0.5, "spm_rate": 0.5 if "spm" in FAMILIES[name].infilling.layouts else 0.0, "unit": "line"}


@pytest.fixture(scope="module", params=NAMES)
def sft_run(request, family_bases, stdlib_rows, tmp_path_factory):
    """(family name, base dir, run dir): 3 SFT steps in the instruct template with infilling examples."""
    name = request.param
    root = tmp_path_factory.mktemp(f"sft-{name}")
    rows = write_jsonl(root / "rows.jsonl", stdlib_rows[:16])
    recipe = make_recipe(root, family_bases[name], rows, train={"max_steps": 3},
                         data={"template": "instruct", "validation": 0, "fim": fim_options(name)},
                         output={"name": "sft", "dir": str(root / "adapters" / "sft")})
    assert train(recipe).steps == 3
    return name, family_bases[name], root / "adapters" / "sft"


def test_each_family_is_resolved_from_its_config_and_tokenizer_not_its_name(family_bases, tmp_path):
    for name, base in family_bases.items():
        misleading = tmp_path / f"{'starcoder2' if name == 'codellama' else 'CodeLlama-7b'}-Instruct-hf"
        shutil.copytree(base, misleading)
        tok = AutoTokenizer.from_pretrained(misleading)
        assert family_of_tokenizer(tok, model_type_of(misleading)).name == name
        family = FAMILIES[name]
        assert not family.is_instruct(load_tokenizer(str(misleading)))  # a base, whatever its name says
        # an Instruct release: its own eos (Qwen, DeepSeek) or its chat template (the Hub's has no generation marks)
        if family.turn_end:
            tok.eos_token = family.turn_end
        else:
            tok.chat_template = family.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
        assert family.is_instruct(tok)
        shutil.rmtree(misleading)
    assert model_type_of(family_bases["qwen2-coder"]) == "qwen2" and model_type_of(tmp_path) is None


def test_sft_with_infilling_leaves_an_adapter_with_the_familys_chat_format(sft_run):
    name, base, run = sft_run
    family = FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(run)
    assert tok.chat_template == family.chat_template
    assert tok.eos_token == (family.turn_end or AutoTokenizer.from_pretrained(base).eos_token)
    weights = load_file(run / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and torch.count_nonzero(v) for k, v in weights.items())
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("name", NAMES)
def test_infilling_examples_follow_the_familys_layout_and_train_on_the_middle(name, family_bases):
    from datasets import Dataset

    tok = load_tokenizer(str(family_bases[name]))
    ids = fim_ids(tok)
    fim = FAMILIES[name].infilling
    code = "def add(a, b):\n    total = a + b\n    return total\n"
    ds = Dataset.from_list([{"text": code, "_code": code}] * 8)
    out = with_infilling(ds, tok, FimSection(rate=1.0, spm_rate=0.0, unit="line"), seed=0)
    for row in out:
        tokens, mask = row["input_ids"], row["completion_mask"]
        start = [tok.bos_token_id] if fim.bos else []
        assert tokens[: len(start) + 1] == [*start, ids.pre] and tokens[-1] == ids.eot
        n = mask.index(1) if 1 in mask else len(mask)
        assert tokens[n - 1] == ids.mid and all(mask[n:])  # the prompt ends at the middle token; the rest trains
    prompt = infill_prompt(tok, ids, "def f(x):\n    return ", "\n")
    expected = [*([tok.bos_token_id] if fim.bos else []), ids.pre, *part(tok, ids, "def f(x):\n    return ", True),
                ids.suf, *part(tok, ids, "\n", False), ids.mid]
    assert prompt == expected
    text = tok.decode(prompt)
    assert text == (tok.bos_token if fim.bos else "") + f"{fim.prefix}def f(x):\n    return {fim.suffix}\n{fim.middle}"


@pytest.mark.parametrize("name", ["qwen2-coder", "deepseek-coder"])
def test_suffix_prefix_middle_is_refused_for_families_trained_without_it(name, family_bases):
    from datasets import Dataset

    from qlcode.errors import QlcodeError

    tok = load_tokenizer(str(family_bases[name]))
    title = FAMILIES[name].title
    with pytest.raises(QlcodeError, match=f"data.fim.spm_rate: {title} was trained with prefix-suffix-middle "
                                          "infilling only; set data.fim.spm_rate: 0"):
        with_infilling(Dataset.from_list([{"text": "x\n", "_code": "x\n"}]), tok, FimSection(), seed=0)
    with pytest.raises(QlcodeError, match=f"{title} was trained with prefix-suffix-middle infilling only"):
        infill_prompt(tok, fim_ids(tok), "a", "b", spm=True)


def test_qlcode_infill_fills_the_middle_with_the_adapter(sft_run, tmp_path):
    from qlcode.cli import app

    name, _, run = sft_run
    src = tmp_path / "f.py"
    src.write_text("def add(a, b):\n    <FILL>\n")
    args = ["infill", str(src), "--adapter", str(run), "--max-new-tokens", "6"]
    if "spm" in FAMILIES[name].infilling.layouts:
        args.append("--spm")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("def add(a, b):\n    ") and res.stdout.endswith("\n")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_preference_methods_train_every_family(name, method, family_bases, tmp_path):
    data = write_jsonl(tmp_path / "pref.jsonl", PREFERENCE)
    recipe = make_recipe(tmp_path, family_bases[name], data, fmt="preference",
                         train={"method": method, "max_steps": 2, "micro_batch_size": 4},
                         data={"template": "instruct", "validation": 0, "max_length": 512})  # room for the system prompts
    result = train(recipe)
    assert result.steps == 2 and np.isfinite(result.train_loss)
    weights = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and torch.count_nonzero(v) for k, v in weights.items())


@pytest.mark.parametrize("name", NAMES)
def test_grpo_trains_every_family_on_executed_rewards(name, family_bases, tmp_path):
    data = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    recipe = make_recipe(tmp_path, family_bases[name], data, fmt="problems",
                         train={"method": "grpo", "max_steps": 1, "micro_batch_size": 2,
                                "grpo": {"num_generations": 2, "max_completion_length": 8}},
                         data={"template": "instruct", "validation": 0, "max_length": 512})
    assert train(recipe).steps == 1
    rewards = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in r for r in rewards)


def test_qlcode_eval_runs_the_adapter(sft_run, tmp_path):
    from qlcode.cli import app

    _, _, run = sft_run
    res = CliRunner().invoke(app, ["eval", "--bench", "python-basics", "--adapter", str(run), "--n", "1", "--k", "1",
                                   "--limit", "1", "--max-new-tokens", "8", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["completions"]) == 1


def test_the_playground_loads_the_family_and_lays_out_its_prompts(sft_run):
    from qlcode.ui.pool import Pool, Settings
    from qlcode.ui.prompts import pane_prompt

    name, base, run = sft_run
    family = FAMILIES[name]
    pool = Pool(str(base), bits=4, adapters=run.parent)
    assert pool.tokenizer.chat_template == family.chat_template  # the base's own family format, not Code Llama's
    chat = pane_prompt("chat", {"text": "Add two numbers."}, [])
    infill = pane_prompt("infill", {"prefix": "def f(x):\n    return ", "suffix": "\n"}, [])
    *_, panes = pool.stream(["base", "adapter:sft"], [chat, infill], Settings(temperature=0, max_new_tokens=4))
    assert all(p.done and p.error is None for p in panes), panes
    fim = family.infilling
    assert pool.laid_out("adapter:sft", infill) == f"{fim.prefix}def f(x):\n    return {fim.suffix}\n{fim.middle}"


@pytest.fixture(scope="module")
def merged(sft_run, tmp_path_factory):
    from qlcode.export.merge import merge

    name, base, run = sft_run
    out = tmp_path_factory.mktemp(f"merged-{name}") / "m"
    report = merge(run, out, dtype="fp32")
    assert report.max_logit_diff < 1e-4  # fp32 merge against base + adapter on the probe batch
    return name, out


def test_merge_matches_base_plus_adapter(merged, sft_run):
    from peft import PeftModel

    name, out = merged
    _, base, run = sft_run
    ids = torch.tensor([[3, 17, 40, 99, 120, 7]])
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run).eval()
    full = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        # fp32 both ways: merging W + s*B@A changes only the order of float additions
        assert torch.allclose(unmerged(input_ids=ids).logits, full(input_ids=ids).logits, atol=1e-4)


def test_gguf_export_names_the_architecture_and_transformers_reads_it_back(merged, tmp_path):
    import gguf

    from qlcode.export.gguf_export import export_gguf

    name, model_dir = merged
    family = FAMILIES[name]
    arch = family.gguf.architecture
    out = tmp_path / "m.gguf"
    report = export_gguf(model_dir, out, "f16")
    reader = gguf.GGUFReader(out)
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == arch and field(f"{arch}.block_count") == 2
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = fim_ids(tok)
    assert [field(f"tokenizer.ggml.fim_{k}_token_id") for k in ("pre", "suf", "mid")] == [ids.pre, ids.suf, ids.mid]
    assert field("tokenizer.ggml.pre") == family.gguf.pre
    names = {t.name for t in reader.tensors}
    assert len(names) == report.tensors and report.max_abs_error == 0.0
    if name == "qwen2-coder":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names
    if name == "starcoder2":
        assert {"blk.0.attn_norm.bias", "blk.0.ffn_up.bias", "blk.0.ffn_down.weight", "output_norm.bias"} <= names
        assert field("starcoder2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    # transformers' own GGUF reader dequantizes f16 back and rebuilds the model: its logits are the merged model's
    # up to f16 rounding of the weights (a 2-layer model at hidden 64: well under 1e-2)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    x = torch.tensor([[5, 17, 40, 99, 120, 7, 3]])
    with torch.no_grad():
        diff = (loaded(input_ids=x).logits - reference(input_ids=x).logits).abs().max().item()
    assert diff < 1e-2, diff


@pytest.mark.parametrize("name", NAMES)
def test_the_4bit_kernels_patch_every_layer_of_the_family(name, family_bases):
    import bitsandbytes as bnb

    from qlcode.kernels.qlora_linear import TRITON, patch_model

    model = load_base(str(family_bases[name]), Quantization(bits=4)).eval()
    x = torch.tensor([[5, 17, 40, 99, 120, 7, 3] * 3])  # 21 rows: the dequantize + matmul path
    with torch.no_grad():
        plain = model(input_ids=x).logits
        layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        assert patch_model(model, TRITON) == layers == 2 * (6 if name == "starcoder2" else 7)
        patched = model(input_ids=x).logits
    # the same 4-bit weights dequantized by Triton (bit-exact) then a torch matmul: fp32 summation order only
    assert torch.allclose(plain, patched, atol=1e-4)


def test_plan_reads_every_shipped_config_offline():
    from qlcode.plan.shapes import SHIPPED, load_shapes

    for family in FAMILIES.values():
        for hub_id, (file, _) in family.shipped.items():
            assert (SHIPPED / file).is_file(), file
            assert json.loads((SHIPPED / file).read_text())["model_type"] in family.model_types
    shapes = load_shapes("bigcode/starcoder2-15b")
    assert (shapes.layers, shapes.heads, shapes.kv_heads, shapes.gated) == (40, 48, 4, False)
    assert set(shapes.linears()) == {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"}
    assert load_shapes("Qwen/Qwen2.5-Coder-7B-Instruct").vocab == 152064
    assert load_shapes("deepseek-ai/deepseek-coder-33b-base").layers == 62


def test_model_cards_carry_the_familys_licence_and_tags(family_bases):
    from qlcode.model_card import license_of, tags_of

    assert [license_of(str(family_bases[n])) for n in NAMES] == ["llama2", "apache-2.0", "other", "bigcode-openrail-m"]
    assert tags_of(str(family_bases["starcoder2"])) == ["starcoder2"]
    # Hub ids the families list resolve offline (Code Llama-Python 7B has no infilling tokens to detect)
    assert license_of("codellama/CodeLlama-7b-Python-hf") == "llama2" and license_of("Qwen/Qwen2.5-Coder-7B") == "apache-2.0"


def test_recipes_and_runs_written_with_codellama_instruct_still_load(tmp_path, family_bases):
    from qlcode.recipe import load_recipe

    data = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "x", "output": "y"}])
    recipe = make_recipe(tmp_path, family_bases["codellama"], data, data={"template": "codellama-instruct"})
    assert recipe.data.template == "instruct"
    assert load_recipe(tmp_path / "recipe.yaml").data.template == "instruct"


@pytest.mark.parametrize("name", NAMES)
def test_chat_prompts_end_where_the_familys_answers_begin(name, family_bases):
    from qlcode.execution.benchmarks import Problem
    from qlcode.execution.completions import INSTRUCT_ASK
    from qlcode.execution.generate import prompt_ids
    from qlcode.ui.prompts import pane_prompt

    tok = load_tokenizer(str(family_bases[name]), template="instruct")
    messages = [{"role": "user", "content": "Add two numbers."}, {"role": "assistant", "content": "a + b"}]
    trained = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
    first_answer_token = trained["assistant_masks"].index(1)
    chat = pane_prompt("chat", {"text": "Add two numbers."}, [])
    assert chat.ids(tok) == trained["input_ids"][:first_answer_token]  # the playground
    problem = Problem(task_id="t/0", prompt="def f():\n", reference="", test="", continues_prompt=True)
    ids = prompt_ids(problem, tok, instruct=True)[0].tolist()  # eval, pairs, pass@1 in training
    asked = tok.apply_chat_template([{"role": "user", "content": INSTRUCT_ASK + "def f():\n"},
                                     {"role": "assistant", "content": "x"}], tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True)
    assert ids == asked["input_ids"][: asked["assistant_masks"].index(1)]
