"""Training options for speed and memory beside the fused blocks: the frozen embeddings and LM head
kept in their loaded dtype, offloaded activations, padding-free packing, torch.compile, liger-kernel."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture
def tiny(tmp_path):
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _losses(model, steps: int = 3) -> list[float]:
    """Losses of `steps` AdamW steps on one fixed batch (dropout off: the two paths draw alike)."""
    ids = torch.randint(3, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_frozen_embeddings_and_lm_head_stay_in_the_loaded_dtype_and_train_like_the_upcast_path(tiny, monkeypatch):
    """A bf16 base (a GPU's dtype, here on CPU without autocast): PEFT's k-bit preparation upcasts the
    embeddings and LM head to fp32; qlcode puts them back in bf16 (norms and LoRA stay fp32). The
    losses of three steps agree with the all-fp32 path within 2% (a bf16 LM head matmul rounds
    the logits to 8 bits of mantissa; the loss itself is computed on fp32 logits)."""
    from qlcode import models

    def lora(keep: bool):
        if not keep:
            monkeypatch.setattr(models, "keep_dtypes", lambda base, frozen: None)
        base = models.load_base(str(tiny), dtype="bf16")
        m = models.with_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear", gradient_checkpointing=False)
        monkeypatch.undo()
        return m

    kept, upcast = lora(True), lora(False)
    assert kept.get_input_embeddings().weight.dtype == kept.get_output_embeddings().weight.dtype == torch.bfloat16
    assert upcast.get_output_embeddings().weight.dtype == torch.float32
    assert kept.base_model.model.model.norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in kept.parameters() if p.requires_grad)
    got, want = _losses(kept), _losses(upcast)
    assert got == pytest.approx(want, rel=2e-2)
    assert got[-1] < got[0], "it trains"


def test_a_trained_lm_head_is_upcast_as_before(tiny):
    from qlcode import models

    base = models.load_base(str(tiny), dtype="bf16")
    m = models.with_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], modules_to_save=["lm_head"],
                         gradient_checkpointing=False)
    assert m.get_input_embeddings().weight.dtype == torch.float32
    trained = [p for n, p in m.named_parameters() if "lm_head" in n and p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_sequences_each_keep_their_own_loss(tmp_path, tiny_base, alpaca_file, attention):
    """data.packing through qlcode's SFT trainer: one padding-free row whose position ids restart at
    each sequence, and attention kept within each (transformers builds the block mask from the
    position ids; flash attention takes TRL's cu_seq_lens on a GPU). Each sequence's loss in the
    packed row equals its loss alone: fp32 on CPU, the only difference the attention kernel's
    shapes (measured 2e-7 on the logits; 1e-5 relative leaves room for other CPUs)."""
    import torch.nn.functional as F
    from conftest import make_recipe

    from qlcode.train import build_trainer

    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, model={"attn_implementation": attention},
                         data={"packing": True, "max_length": 256, "validation": 0}, train={"micro_batch_size": 2})
    trainer, _ = build_trainer(recipe)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 3, "several rows packed"
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for start, end in zip(starts, [*starts[1:], batch["input_ids"].shape[1]]):
            ids, labels = batch["input_ids"][0, start:end], batch["labels"][0, start:end]
            assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
            alone = model(input_ids=ids[None]).logits[0]
            loss_packed = F.cross_entropy(packed[start:end - 1], labels[1:], ignore_index=-100)
            loss_alone = F.cross_entropy(alone[:-1], labels[1:], ignore_index=-100)
            assert loss_packed.item() == pytest.approx(loss_alone.item(), rel=1e-5)


def _two_steps(recipe, ids: torch.Tensor) -> tuple[torch.nn.Module, list[float], dict[str, torch.Tensor]]:
    """The recipe's trainable model, seeded, through two AdamW steps on `ids`: (model, losses, the last LoRA gradients)."""
    from qlcode.train import trainable_model

    torch.manual_seed(0)
    model = trainable_model(recipe).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, grads = [], {}
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses, grads


def test_offloaded_activations_give_the_same_losses_and_gradients(tmp_path, tiny_base, alpaca_file, monkeypatch):
    """train.offload_activations with checkpointing: each layer's input leaves (on CPU: a plain copy,
    the same code path) and comes back; two optimizer steps' losses and LoRA gradients are equal
    bit for bit, since the values moved are the values used."""
    from conftest import make_recipe

    from qlcode.kernels import offload

    ids = torch.randint(3, 4000, (2, 40), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(offload, "MIN_BYTES", ids.numel() * 64 * 4)  # a layer input of the tiny model (fp32)
    runs = {}
    for on in (False, True):
        recipe = make_recipe(tmp_path / str(on), tiny_base, alpaca_file, lora={"dropout": 0.05},
                             train={"gradient_checkpointing": True, "offload_activations": on})
        model, losses, grads = _two_steps(recipe, ids)
        runs[on] = losses, grads, getattr(model, "offloaded", None)
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(runs[True][1][n], g) for n, g in runs[False][1].items())
    assert runs[False][2] is None
    layer_inputs = [s for s in runs[True][2].moved if s == (2, 40, 64)]
    assert len(layer_inputs) >= 2 * 2, "each step moved both layers' inputs"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream and the prefetch are CUDA's")
def test_offloaded_activations_on_cuda_prefetch_and_train_alike(tmp_path, tiny_base, alpaca_file, monkeypatch):
    """On a GPU (benchmarks/gpu_session.sh runs it): each layer's input leaves through pinned memory
    and comes back, every one but the first taken back by a prefetch started when backward took
    the one after it; two steps' losses and LoRA gradients equal the path without offloading to
    the order of CUDA's sums (1e-6)."""
    from conftest import make_recipe

    from qlcode.kernels import offload

    ids = torch.randint(3, 4000, (2, 40), generator=torch.Generator().manual_seed(1)).cuda()
    monkeypatch.setattr(offload, "MIN_BYTES", ids.numel() * 64 * 4)
    runs = {}
    for on in (False, True):
        recipe = make_recipe(tmp_path / str(on), tiny_base, alpaca_file, quant={"kernels": "bitsandbytes"},
                             train={"gradient_checkpointing": True, "offload_activations": on})
        model, losses, grads = _two_steps(recipe, ids)  # placed on the GPU by qlcode.placement
        runs[on] = losses, grads, getattr(model, "offloaded", None)
    hooks = runs[True][2]
    assert len(hooks.moved) >= 2 * 2 and hooks.prefetched == len(hooks.moved) - 2  # each step's first needs no prefetch
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    for name, want in runs[False][1].items():
        assert (runs[True][1][name] - want).norm() <= 1e-6 * want.norm() + 1e-12, name


def test_liger_without_a_gpu_is_a_recipe_level_error(tmp_path, tiny_base, alpaca_file):
    from conftest import make_recipe

    from qlcode.errors import ModelError
    from qlcode.train import trainable_model

    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, train={"liger": True})
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs liger's kernels: the GPU session covers it")
    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional extra: pip install 'qlcode[liger]'")
    with pytest.raises(ModelError, match=r"^train.liger: liger-kernel's Triton kernels need a CUDA GPU; "
                                         r"set train.liger: false on this machine$"):
        trainable_model(recipe)


LIGER_CHECK = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers.models.llama import modeling_llama
from liger_kernel.transformers.rope import liger_rotary_pos_emb
from liger_kernel.transformers.rms_norm import LigerRMSNorm
from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
from liger_kernel.transformers.model.llama import lce_forward
from qlcode.kernels import fused_blocks, liger
from qlcode.kernels.qlora_linear import TRITON, patch_model
from qlcode.models import load_base

fused = sys.argv[2] == "fused"
model = get_peft_model(load_base(sys.argv[1]), LoraConfig(r=4, target_modules="all-linear"))
if fused:
    patch_model(model, TRITON)
    fused_blocks.patch_blocks(model, TRITON)
print(liger.apply_liger(model, fused_mlp=fused))
base = model.get_base_model()
assert modeling_llama.apply_rotary_pos_emb is liger_rotary_pos_emb
assert base.forward.__func__ is lce_forward
norms = [m for m in base.modules() if type(m).__name__ == "LlamaRMSNorm"]
assert len(norms) == 5 and all(m.forward.__func__ is LigerRMSNorm.forward for m in norms)
mlps = [m for m in base.modules() if type(m).__name__ == "LlamaMLP"]
want = fused_blocks._mlp_forward if fused else LigerSwiGLUMLP.forward
assert len(mlps) == 2 and all(m.forward.__func__ is want for m in mlps)
print("ok")
"""


@pytest.mark.parametrize("blocks", ["fused", "plain"])
def test_liger_patches_rope_norms_and_the_loss_and_leaves_a_fused_mlp_alone(tiny_base, tmp_path, blocks):
    """The patching itself, on CPU (running liger's kernels needs a GPU): in a process of its own,
    since liger patches transformers' Llama module for the whole process."""
    import subprocess
    import sys

    from conftest import REPO

    pytest.importorskip("liger_kernel", reason="liger-kernel is an optional extra: pip install 'qlcode[liger]'")
    script = tmp_path / "check.py"
    script.write_text(LIGER_CHECK)
    out = subprocess.run([sys.executable, str(script), str(tiny_base), blocks], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    ops = ["rope", "rms_norm", "fused_linear_cross_entropy"] if blocks == "fused" else ["rope", "rms_norm", "swiglu", "fused_linear_cross_entropy"]
    assert out.stdout.splitlines()[-2:] == [str(ops), "ok"]


def test_a_tiled_mlp_trains_as_the_one_pass_mlp(tmp_path, tiny_base, alpaca_file, monkeypatch):
    """The fused MLP in tiles of 32 of the batch's 80 tokens (3 tiles), under checkpointing, against
    one pass, without dropout (with it, tiles draw their own masks: tests/test_fused_qlora.py): two
    optimizer steps' losses and LoRA gradients agree to fp32 rounding (the tiles' LoRA gradients
    are summed in another order)."""
    from conftest import make_recipe

    from qlcode.kernels import fused_blocks

    ids = torch.randint(3, 4000, (2, 40), generator=torch.Generator().manual_seed(1))
    apply, calls = fused_blocks.LoRAMLP.apply, []

    def counted(x, projections, kernels, tile, *lora):
        calls.append((x.shape[:-1].numel(), tile))
        return apply(x, projections, kernels, tile, *lora)

    monkeypatch.setattr(fused_blocks.LoRAMLP, "apply", counted)
    runs = {}
    for tile in (80, 32):
        if tile == 32:
            monkeypatch.setattr(fused_blocks, "MLP_TILE", 32)
            monkeypatch.setattr(fused_blocks, "MLP_TILED_ABOVE", 32)
        recipe = make_recipe(tmp_path / str(tile), tiny_base, alpaca_file, quant={"kernels": "triton"},
                             train={"gradient_checkpointing": True})
        runs[tile] = _two_steps(recipe, ids)[1:]
    # 2 layers x 2 steps x (forward, checkpointing's recompute), each over all 80 tokens
    assert calls == [(80, 80)] * 8 + [(80, 32)] * 8
    assert runs[32][0] == pytest.approx(runs[80][0], rel=1e-6)
    assert runs[32][1].keys() == runs[80][1].keys()
    for name, want in runs[80][1].items():
        assert (runs[32][1][name] - want).norm() <= 1e-5 * want.norm(), name


def test_compile_trains_to_the_same_losses_and_reports_its_compile_time(tmp_path, tiny_base, alpaca_file, monkeypatch):
    """train.compile through TrainingArguments.torch_compile, via `qlcode train`: three steps compiled and
    three eager give the same losses, and the run summary has a compile time row (torch's own count).
    The backend here is aot_eager: dynamo's capture and AOTAutograd's joint forward-backward graph as
    with inductor, run by eager kernels, since inductor's C++ build of even this tiny model takes
    minutes on 2 cores (users get inductor). Tolerance 1e-5 relative: fp32 throughout, and the
    decomposed graph may order a reduction differently from eager (measured: equal to the last bit)."""
    import json

    from conftest import make_recipe
    from typer.testing import CliRunner

    from qlcode import train
    from qlcode.cli import app

    monkeypatch.setattr(train, "COMPILE_BACKEND", "aot_eager")
    losses, outputs = {}, {}
    for on in (True, False):
        recipe = make_recipe(tmp_path / str(on), tiny_base, alpaca_file, data={"validation": 0},
                             train={"compile": on, "max_steps": 3, "save_steps": 100})
        res = CliRunner().invoke(app, ["train", str(tmp_path / str(on) / "recipe.yaml")])
        assert res.exit_code == 0, res.output
        run = tmp_path / str(on) / "run"
        losses[on] = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        outputs[on] = res.output, json.loads((run / "summary.json").read_text())
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-5)
    (shown, summary), (eager_shown, eager_summary) = outputs[True], outputs[False]
    assert 0 < summary["compile_seconds"] < summary["seconds"]
    assert f"│ compile time     │ {summary['compile_seconds']:.1f} s of the time above" in shown
    assert eager_summary["compile_seconds"] is None and "compile time" not in eager_shown


def test_compile_with_offloaded_activations_is_one_recipe_error(tmp_path, tiny_base, alpaca_file):
    from conftest import make_recipe

    from qlcode.errors import RecipeError

    with pytest.raises(RecipeError) as e:
        make_recipe(tmp_path, tiny_base, alpaca_file, train={"compile": True, "offload_activations": True})
    lines = (tmp_path / "recipe.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("compile:"))
    assert str(e.value) == (f"{tmp_path / 'recipe.yaml'}:{line}: train.compile: torch.compile cannot trace "
                            "train.offload_activations' saved-tensor hooks (the first step fails): set train.compile: "
                            "false or train.offload_activations: false")
