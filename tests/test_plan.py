"""qlcode plan: each counted part against what bitsandbytes, PEFT, torch and a real forward pass
allocate; the shipped configs; the suggestions and the preflight; the recipes' memory lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from conftest import REPO, make_recipe
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from qlcode.errors import QlcodeError
from qlcode.plan import GiB, PlanError, Settings, Shapes, gpu_bytes, load_shapes, plan, plan_recipe, preflight, settings
from qlcode.plan.memory import layer_activation_bytes, optimizer_bytes, quantized_bytes
from qlcode.recipe import load_recipe

HEADER = re.compile(r"^# GPU memory \(qlcode plan\): (\d+(?:\.\d+)?) GiB", re.MULTILINE)


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("nf4", False), ("fp4", True)])
def test_4bit_bytes_are_what_bitsandbytes_allocates(quant_type, double_quant):
    weight = torch.randn(300, 517)  # 155,100 elements: not a multiple of the 64 or 256-block sizes
    packed, state = bnb.functional.quantize_4bit(weight, quant_type=quant_type, compress_statistics=double_quant)
    tensors = [packed, state.absmax, state.code] + ([state.offset, state.state2.absmax, state.state2.code] if double_quant else [])
    assert quantized_bytes(300, 517, Settings(bits=4, double_quant=double_quant)) == sum(t.nbytes for t in tensors)


@pytest.mark.parametrize("name", ["adamw_8bit", "adamw_torch"])
def test_optimizer_state_is_what_the_optimizer_allocates(name):
    sizes = [16 * 4096, 1000, 70001]  # a LoRA A, a tensor under bitsandbytes' 8-bit minimum, an odd size
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    opt = bnb.optim.AdamW8bit(params) if name == "adamw_8bit" else torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for state in opt.state.values() for t in state.values() if torch.is_tensor(t)}
    assert optimizer_bytes(sizes, name) == sum(storages.values())


def _saved_tensors(base: Path, overrides: list[str], tokens: torch.Tensor, autocast: bool = False) -> list[torch.Tensor]:
    """The tensors autograd saves in a forward pass of `base` loaded as qlcode trains it (4 bits,
    LoRA), one per storage; `autocast`: under bf16 autocast, as on a GPU."""
    from qlcode.train import trainable_model

    recipe = load_recipe(REPO / "recipes" / "python-sft.yaml",
                         [f"model.base={base}", "train.gradient_checkpointing=false", "quant.kernels=bitsandbytes", *overrides])
    model = trainable_model(recipe).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = t
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=tokens, labels=tokens)
    return list(seen.values())


def _saved_bytes(base: Path, overrides: list[str], tokens: torch.Tensor) -> int:
    """Bytes autograd saves in a forward pass of `base` loaded as qlcode trains it (4 bits, LoRA)."""
    return sum(t.untyped_storage().nbytes() for t in _saved_tensors(base, overrides, tokens))


@pytest.mark.parametrize("overrides", [
    ["lora.dropout=0.05"],
    ["lora.dropout=0"],
    ["lora.dropout=0", "lora.target_modules=[q_proj,v_proj,down_proj]"],
    ["lora.dropout=0.1", "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "lora.r=8"],
    ["lora.dropout=0", "model.attn_implementation=eager"],
    ["lora.dropout=0.05", "quant.kernels=triton"],
    ["lora.dropout=0.05", "quant.kernels=triton", "lora.target_modules=[q_proj,v_proj,down_proj]"],
    ["lora.dropout=0", "quant.kernels=triton", "model.attn_implementation=eager"],
], ids=["all-linear-dropout", "all-linear", "some", "attention-dropout", "eager", "fused", "fused-some", "fused-eager"])
def test_a_layers_activations_are_what_autograd_saves(tmp_path, overrides):
    """One layer more adds exactly the planned per-layer bytes (CPU: fp32, dropout masks in fp32);
    quant.kernels=triton trains through the fused blocks (Triton interpreted)."""
    measured, planned = _one_layers_saved_bytes(tmp_path, overrides)
    assert measured == planned


@pytest.mark.parametrize("overrides", [
    ["lora.dropout=0.05"],
    ["lora.dropout=0.05", "quant.kernels=triton"],
    ["lora.dropout=0", "quant.kernels=triton", "lora.target_modules=[q_proj,v_proj,down_proj]"],
], ids=["plain", "fused", "fused-some"])
def test_a_qwen2_layers_activations_are_what_autograd_saves(tmp_path, overrides):
    """Qwen2 (q, k, v biased): the same count as Llama's, fused or not; the fused blocks' biases are
    frozen and save nothing."""
    measured, planned = _one_layers_saved_bytes(tmp_path, overrides, family="qwen2")
    assert measured == planned


def test_a_tiled_mlp_saves_only_its_input(tmp_path, monkeypatch):
    """Above the tile (here 32 of the 96 tokens) the fused MLP saves its input alone: gate's and up's
    outputs (2 x intermediate per token) are no longer saved, and the plan says so."""
    from qlcode.kernels import fused_blocks

    overrides = ["lora.dropout=0.05", "quant.kernels=triton"]
    one_pass = _one_layers_saved_bytes(tmp_path / "one", overrides)
    monkeypatch.setattr(fused_blocks, "MLP_TILE", 32)
    monkeypatch.setattr(fused_blocks, "MLP_TILED_ABOVE", 32)
    measured, planned = _one_layers_saved_bytes(tmp_path / "tiled", overrides, mlp_tile=32)
    assert measured == planned == one_pass[0] - 96 * 4 * 2 * 344


def _one_layers_saved_bytes(tmp_path, overrides: list[str], mlp_tile: int | None = None, family: str = "llama") -> tuple[int, int]:
    """(bytes autograd saves for one decoder layer more, the plan's count) over 2 x 48 tokens, for a
    Llama or Qwen2 base."""
    from dataclasses import replace

    tokens = torch.randint(3, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    overrides = [*overrides, "data.max_length=48"]
    measured = []
    for layers in (1, 2):
        config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
        config = config_class(vocab_size=500, hidden_size=128, intermediate_size=344, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        model_class(config).save_pretrained(tmp_path / f"l{layers}")
        measured.append(_saved_bytes(tmp_path / f"l{layers}", overrides, tokens))
    recipe = load_recipe(REPO / "recipes" / "python-sft.yaml", [f"model.base={tmp_path / 'l1'}", *overrides])
    shapes = load_shapes(str(tmp_path / "l1"))
    assert (shapes.kv_heads, shapes.head_dim) == (2, 32)
    s = settings(recipe, "cpu")
    s = replace(s, mlp_tile=mlp_tile, mlp_tiled_above=mlp_tile) if mlp_tile else s
    return measured[1] - measured[0], tokens.numel() * layer_activation_bytes(shapes, s)


def test_under_autocast_a_4bit_layers_mlp_saves_fp32(tmp_path):
    """The GPU's precision, which the fp32 test above cannot tell apart: a 4-bit linear returns its
    input's dtype, the RMSNorm's fp32 output, so gate, silu(gate) and up are saved in fp32 (the plan
    counted them in bf16 until an H100 measured it 11-23% low without checkpointing)."""
    config = LlamaConfig(vocab_size=500, hidden_size=128, intermediate_size=344, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "l1")
    tokens = torch.randint(3, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    saved = _saved_tensors(tmp_path / "l1", ["lora.dropout=0"], tokens, autocast=True)  # (CPU dropout masks are fp32)
    mlp = [t for t in saved if t.shape == (2, 48, 344)]
    assert [t.dtype for t in mlp] == [torch.float32] * 3
    shapes = load_shapes(str(tmp_path / "l1"))
    # an fp32 base, unquantized: torch's linear under autocast returns bf16; the same base in 4 bits: fp32
    bf16, fp32 = (layer_activation_bytes(shapes, Settings(bits=b, weight_bytes=4, max_length=48)) for b in (None, 4))
    assert fp32 - bf16 == 3 * (4 - 2) * 344


def test_shipped_configs_give_code_llamas_shapes_offline():
    seven = load_shapes("codellama/CodeLlama-7b-hf")
    assert seven == Shapes(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, head_dim=128, vocab=32016)
    assert load_shapes("codellama/CodeLlama-7b-Python-hf").vocab == 32000
    assert load_shapes("codellama/CodeLlama-13b-Instruct-hf").vocab == 32016
    big = load_shapes("codellama/CodeLlama-34b-Python-hf")
    assert (big.hidden, big.intermediate, big.layers, big.heads, big.kv_heads, big.vocab) == (8192, 22016, 48, 64, 8, 32000)
    huge = load_shapes("codellama/CodeLlama-70b-Instruct-hf")
    assert (huge.intermediate, huge.layers, huge.kv_heads) == (28672, 80, 8)
    # the benchmarks' copy of the same shapes agrees
    sys.path.insert(0, str(REPO / "benchmarks"))
    from harness import CODELLAMA

    for size, (h, f, layers, heads, kv) in CODELLAMA.items():
        s = load_shapes(f"codellama/CodeLlama-{size.lower()}-hf")
        assert (s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads) == (h, f, layers, heads, kv)


def test_builtin_model_shapes_come_from_its_config():
    assert load_shapes("builtin:micro-codellama") == Shapes(hidden=256, intermediate=768, layers=4, heads=4, kv_heads=4,
                                                             head_dim=64, vocab=4096)


def test_gpu_sizes_by_size_or_name():
    assert gpu_bytes("24GB") == 24 * GiB
    assert gpu_bytes("a100-80gb") == gpu_bytes("H100") == 80 * GiB
    assert gpu_bytes("RTX4090") == 24 * GiB
    with pytest.raises(QlcodeError, match="give a size such as 24GB, or one of: T4"):
        gpu_bytes("lots")


def test_each_part_moves_with_the_setting_it_depends_on():
    shapes = load_shapes("codellama/CodeLlama-7b-hf")
    base = plan(shapes, Settings(micro_batch=1, max_length=2048, checkpointing=True))
    assert plan(shapes, Settings(micro_batch=1, max_length=2048, checkpointing=False)).part("activations") > 8 * base.part("activations")
    dpo = plan(shapes, Settings(method="dpo"))
    assert dpo.part("activations") == plan(shapes, Settings(micro_batch=2)).part("activations")  # chosen + rejected
    eager = layer_activation_bytes(shapes, Settings(attention="eager", max_length=4096))
    sdpa = layer_activation_bytes(shapes, Settings(attention="sdpa", max_length=4096))
    # the fp32 softmax and its bf16 copy per head and key; no log-sum-exp nor a separate output copy
    assert eager - sdpa == 32 * 4096 * (4 + 2) - 32 * 4 - 2 * 4096
    four, eight, full = (plan(shapes, Settings(bits=b)).part("base weights") for b in (4, 8, None))
    params = 32 * sum(o * i for o, i in shapes.linears().values())
    assert full == 2 * params and eight > params and params / 2 < four < 0.52 * params
    assert plan(shapes, Settings(dora=True)).part("DoRA weights") - base.part("LoRA weights") == 4 * 32 * (5 * 4096 + 2 * 11008)


@pytest.fixture
def impossible_34b(tmp_path, alpaca_file):
    return make_recipe(tmp_path, "codellama/CodeLlama-34b-Python-hf", alpaca_file,
                       lora={"r": 16, "alpha": 32, "target_modules": "all-linear"},
                       data={"max_length": 16384, "validation": 0},
                       train={"micro_batch_size": 8, "gradient_accumulation_steps": 2, "optimizer": "paged_adamw_8bit",
                              "gradient_checkpointing": True})


def test_preflight_stops_an_impossible_run_with_changes_plan_confirms(impossible_34b):
    capacity = 24 * GiB
    with pytest.raises(PlanError) as stopped:
        preflight(impossible_34b, capacity=capacity)
    message = str(stopped.value)
    assert message.startswith("this run needs about ") and "and the GPU has 24.0 GiB" in message
    assert message.endswith("or skip this check with --no-preflight")
    fixes = [line.strip().split("   (")[0].split() for line in message.splitlines() if line.startswith("  ")]
    assert fixes, message
    recipe_file = Path(impossible_34b.output.dir).parent / "recipe.yaml"
    for overrides in fixes:
        replanned = plan_recipe(load_recipe(recipe_file, overrides))
        assert replanned.total <= capacity, overrides
    # the mildest micro batch that fits: one more sequence per batch does not
    batch = next(int(o.split("=")[1]) for f in fixes for o in f if o.startswith("train.micro_batch_size="))
    assert plan_recipe(load_recipe(recipe_file, [f"train.micro_batch_size={batch * 2}"])).total > capacity
    assert preflight(impossible_34b, capacity=capacity, skip=True) is None


def test_preflight_lets_a_fitting_run_through_and_needs_no_gpu_on_cpu(impossible_34b):
    fitting = impossible_34b.model_copy(update={"data": impossible_34b.data.model_copy(update={"max_length": 1024}),
                                                "train": impossible_34b.train.model_copy(update={"micro_batch_size": 1})})
    assert preflight(fitting, capacity=24 * GiB).total <= 24 * GiB
    if not torch.cuda.is_available():
        assert preflight(impossible_34b) is None  # no GPU: nothing to check against


def test_plan_command_prints_the_table_verdict_and_changes():
    from typer.testing import CliRunner

    from qlcode.cli import app

    def cli(*args: str):
        return CliRunner().invoke(app, ["plan", *args])

    res = cli(str(REPO / "recipes" / "python-sft.yaml"), "--gpu", "24GB")
    assert res.exit_code == 0, res.output
    total = plan_recipe(load_recipe(REPO / "recipes" / "python-sft.yaml")).total
    assert re.search(rf"│ total\s+│\s+{total / GiB:.2f} │", res.output), res.output
    assert f"fits on 24GB (24.00 GiB): {(24 * GiB - total) / GiB:.2f} GiB to spare" in res.output
    res = cli(str(REPO / "recipes" / "34b-24gb.yaml"), "--gpu", "T4")
    assert res.exit_code == 0 and "does not fit on T4 (15.00 GiB)" in res.output
    assert "no change of micro batch" in res.output  # a 34B base alone is larger than 15 GiB
    res = cli(str(REPO / "recipes" / "python-sft.yaml"), "--gpu", "8GB", "train.gradient_checkpointing=false")
    assert "changes that make it fit" in res.output and "train.gradient_checkpointing=true" in res.output
    res = cli(str(REPO / "recipes" / "python-sft.yaml"), "--gpu", "lots")
    assert res.exit_code == 2 and "error: --gpu 'lots': give a size such as 24GB" in res.output


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_recipe_memory_lines_are_the_plans(path):
    """Each recipe's header states the total `qlcode plan` prints for it, rounded to 0.1 GiB."""
    text = (REPO / "recipes" / path).read_text()
    found = HEADER.search(text)
    assert found, f"recipes/{path}: no '# GPU memory (qlcode plan): N GiB' line in the header"
    recipe = load_recipe(REPO / "recipes" / path)
    assert found.group(1) == f"{plan_recipe(recipe).total / GiB:.1f}", f"recipes/{path}: rerun qlcode plan and update the header"



def test_memory_benchmark_runs_and_prints_the_plan_beside_each_measurement():
    """benchmarks/plan_memory.py on CPU (the 7B architecture divided by 32, 2 layers): its table."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plan_memory.py"), "--scale", "32", "--layers", "2",
                          "--seq-len", "48", "--batch", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CPU, Triton interpreter: a run of the script, its timings are not figures" in out.stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines() if line.startswith("| 48")]
    assert [r[:3] for r in rows] == [["48", "2", "on"], ["48", "2", "off"]]
    shapes = load_shapes(str(REPO / "build" / "bench-models" / "codellama-7B-random-s32-l2"))
    for row, checkpointing in zip(rows, (True, False)):
        planned = plan(shapes, Settings(device="cpu", compute_bytes=4, weight_bytes=4, micro_batch=2, max_length=48,
                                        checkpointing=checkpointing))
        assert row[3:] == [f"{planned.total / GiB:.2f}", "-", "-"]


def test_train_command_runs_the_preflight_on_a_gpu_before_loading_anything(impossible_34b, monkeypatch):
    """`qlcode train` on a (here simulated) 24 GiB GPU stops the impossible run with exit 2."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from qlcode.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=24 * GiB))
    recipe_file = Path(impossible_34b.output.dir).parent / "recipe.yaml"
    res = CliRunner().invoke(app, ["train", str(recipe_file)])
    assert res.exit_code == 2, res.output
    assert "error: this run needs about" in res.output and "changes that make it fit" in res.output
    assert not Path(impossible_34b.output.dir).exists()  # stopped before the run directory or any model


def test_train_command_plans_against_its_memory_cap(impossible_34b, monkeypatch):
    """`qlcode train --memory-cap 24GB` on a (simulated) 139 GiB H200, as benchmarks/train_capped.py
    emulates a 24 GB card: the preflight plans against the cap, not the whole GPU."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from qlcode.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=139 * GiB))
    recipe_file = Path(impossible_34b.output.dir).parent / "recipe.yaml"
    res = CliRunner().invoke(app, ["train", str(recipe_file), "--memory-cap", "24GB"])
    assert res.exit_code == 2, res.output
    assert "and the GPU has 24.0 GiB" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["train", str(recipe_file), "--memory-cap", "24XB"])
    assert res.exit_code == 2 and "--memory-cap '24XB': give a size such as 24GB" in " ".join(res.output.split())


def test_memory_cap_sets_the_fraction_of_this_process_gpu(monkeypatch):
    from types import SimpleNamespace

    from qlcode.errors import QlcodeError
    from qlcode.placement import cap_gpu_memory

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=128 * GiB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.setenv("LOCAL_RANK", "1")
    cap_gpu_memory(24 * GiB)
    assert calls == [(24 / 128, torch.device("cuda", 1))]
    with pytest.raises(QlcodeError, match=r"^--memory-cap: 200.0 GiB is more than this GPU's 128.0 GiB$"):
        cap_gpu_memory(200 * GiB)


def test_offloaded_activations_move_the_layer_inputs_to_cpu_memory():
    shapes = load_shapes("codellama/CodeLlama-7b-hf")
    kept, moved = (plan(shapes, Settings(max_length=4096, fused=True, offload=o)) for o in (False, True))
    inputs = 4096 * 32 * 4 * 4096  # tokens x layers x fp32 x hidden
    assert kept.part("activations") - moved.part("activations") == inputs - 2 * inputs // 32
    assert [(p.name, p.bytes) for p in moved.host] == [("offloaded activations", inputs)] and kept.host == []
    assert moved.part("peak working set") == kept.part("peak working set")


def test_longest_is_the_last_length_that_fits():
    from dataclasses import replace

    from qlcode.plan import longest

    shapes = load_shapes("codellama/CodeLlama-7b-hf")
    for s in (Settings(), Settings(fused=True, offload=True)):
        n = longest(shapes, s, 24 * GiB)
        assert n % 256 == 0 and n > 8192
        assert plan(shapes, replace(s, max_length=n)).total <= 24 * GiB < plan(shapes, replace(s, max_length=n + 256)).total
    assert longest(shapes, Settings(), 3 * GiB) == 0  # the 4-bit weights alone take 3.1 GiB


def test_plan_command_prints_the_longest_sequence_and_the_cpu_part():
    from typer.testing import CliRunner

    from qlcode.cli import app
    from qlcode.plan import longest

    recipe = REPO / "recipes" / "python-sft.yaml"
    res = CliRunner().invoke(app, ["plan", str(recipe), "--gpu", "RTX4090", "--longest", "train.micro_batch_size=1",
                                   "train.offload_activations=true"], terminal_width=200)
    assert res.exit_code == 0, res.output
    planned = plan_recipe(load_recipe(recipe, ["train.micro_batch_size=1", "train.offload_activations=true"]))
    n = longest(planned.shapes, planned.settings, 24 * GiB)
    assert f"longest max_length that fits RTX4090 (24.00 GiB): {n:,} tokens (micro batch 1" in res.output
    assert re.search(r"CPU: offloaded activations\s+│\s+1\.00 │ each layer's input in pinned CPU memory", res.output), res.output


def test_packing_counts_the_block_mask_transformers_builds():
    """SDPA gets a boolean (tokens x tokens) mask over the packed row (tests/test_train_speed.py checks
    it keeps sequences apart); flash attention takes sequence bounds and needs none."""
    shapes = load_shapes("codellama/CodeLlama-7b-hf")
    packed = plan(shapes, Settings(micro_batch=2, max_length=1024, packing=True))
    assert packed.part("packed attention mask") == (2 * 1024) ** 2
    flash = plan(shapes, Settings(micro_batch=2, max_length=1024, packing=True, attention="flash_attention_2"))
    assert "packed attention mask" not in [p.name for p in flash.parts]


def test_the_fused_blocks_count_for_llama_and_qwen2_bases_only():
    """quant.fused_blocks patches Llama's and Qwen2's MLP and attention (Code Llama, DeepSeek-Coder,
    Qwen2.5-Coder); a StarCoder2 base keeps the plain path, so its plan too."""
    for base in ("codellama/CodeLlama-7b-hf", "deepseek-ai/deepseek-coder-6.7b-base", "Qwen/Qwen2.5-Coder-7B"):
        shapes = load_shapes(base)
        assert shapes.fusable, base
        fused, plain = (plan(shapes, Settings(fused=f, checkpointing=False)) for f in (True, False))
        assert fused.part("activations") < plain.part("activations"), base
    starcoder = load_shapes("bigcode/starcoder2-7b")
    assert not starcoder.fusable
    assert plan(starcoder, Settings(fused=True)).total == plan(starcoder, Settings(fused=False)).total


LLAMA_31_8B = Shapes(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256)
LONGEST_ROWS = {  # README's "Will it fit" table: the row's start -> (shapes, settings at batch 1)
    "| Llama 3.1 8B shapes, batch 1, r32 all-linear: longest": (LLAMA_31_8B, Settings(micro_batch=1, lora_r=32)),
    "| the same, fused blocks (": (LLAMA_31_8B, Settings(micro_batch=1, lora_r=32, fused=True)),
    "| the same, fused blocks + `train.offload_activations`": (LLAMA_31_8B, Settings(micro_batch=1, lora_r=32, fused=True, offload=True)),
    "| CodeLlama-7B, batch 1, r16 all-linear, fused blocks + offloading": (None, Settings(micro_batch=1, fused=True, offload=True)),
}


@pytest.mark.parametrize("row", list(LONGEST_ROWS))
def test_readme_longest_rows_are_the_plans(row):
    """README's longest sequences on 12 / 16 / 24 / 40 / 80 GiB are `longest`'s, and CodeLlama-7B's
    on 24 GiB meets issue 23's 80,000 tokens (planned; the tiled MLP is what gets it there)."""
    from dataclasses import replace

    from qlcode.plan import longest

    shapes, s = LONGEST_ROWS[row]
    shapes = shapes or load_shapes("codellama/CodeLlama-7b-hf")
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(row))
    written = [int(n.replace(",", "")) for n in line.split("|")[2].split("/")]
    planned = [longest(shapes, s, gib * GiB) for gib in (12, 16, 24, 40, 80)]
    assert written == planned, f"README.md: {row}...: rerun the plan ({planned})"
    if "CodeLlama" in row:
        assert planned[2] >= 80_000 > longest(shapes, replace(s, mlp_tiled_above=1 << 30), 24 * GiB)
