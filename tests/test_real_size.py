"""CodeLlama-7B's exact layer shapes (hidden 4096, intermediate 11008, 32 heads, vocab 32016), one
decoder layer, random weights: through qlcode's own loading and training path in 4 bits, and its
real bytes against `qlcode plan`'s for the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, TrainerCallback

from qlcode.builtin import MODELS
from qlcode.plan import Shapes, plan, plan_recipe, settings
from conftest import make_recipe, write_jsonl

CODELLAMA_7B_LAYER = Shapes(hidden=4096, intermediate=11008, layers=1, heads=32, kv_heads=32, head_dim=128, vocab=32016)


@pytest.fixture(scope="module")
def codellama_7b_layer(tmp_path_factory) -> Path:
    """Written straight as safetensors from one random buffer (a model's own init of 460M
    parameters takes ~10 s on two cores; the values only need to be finite and varied)."""
    out = tmp_path_factory.mktemp("codellama-7b-1-layer")
    s = CODELLAMA_7B_LAYER
    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
                         num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=16384,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, dtype="bfloat16",
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    config.save_pretrained(out)
    noise = (torch.randn(s.intermediate * s.hidden, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)

    def weight(*shape: int) -> torch.Tensor:
        n = shape[0] * (shape[1] if len(shape) > 1 else 1)
        return noise.repeat(-(-n // noise.numel()))[:n].view(*shape).clone()

    tensors = {"model.embed_tokens.weight": weight(s.vocab, s.hidden), "lm_head.weight": weight(s.vocab, s.hidden),
               "model.norm.weight": torch.ones(s.hidden, dtype=torch.bfloat16)}
    for i in range(s.layers):
        for name, (o, n) in s.linears().items():
            group = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            tensors[f"model.layers.{i}.{group}.{name}.weight"] = weight(o, n)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = torch.ones(s.hidden, dtype=torch.bfloat16)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(MODELS["micro-codellama"]).save_pretrained(out)
    return out


class GradientBytes(TrainerCallback):
    """The bytes of the trainable parameters' gradients, just before each optimizer step."""

    def __init__(self) -> None:
        self.model = None
        self.seen: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.seen.append(sum(p.grad.nbytes for p in model.parameters() if p.requires_grad and p.grad is not None))


def train_briefly(recipe, callback: TrainerCallback):
    """qlcode's own path: load the base in 4 bits, wrap it in LoRA, build the TRL trainer, train."""
    from qlcode.train import build_trainer

    trainer, _ = build_trainer(recipe, [callback])
    trainer.train()
    return trainer


def real_bytes(model: torch.nn.Module, optimizer) -> dict[str, int]:
    import bitsandbytes as bnb

    quantized, counted = 0, set()
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            q = m.weight.quant_state
            state = [m.weight.data, q.absmax, q.code] + ([q.offset, q.state2.absmax, q.state2.code] if q.nested else [])
            quantized += sum(t.nbytes for t in state)
            counted.add(id(m.weight))
    frozen = sum(p.nbytes for p in model.parameters() if id(p) not in counted and not p.requires_grad)
    storages = {}
    for state in optimizer.state.values():
        for t in state.values():
            if torch.is_tensor(t):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return {
        "base weights": quantized,
        "embeddings, lm_head, norms": frozen,
        "buffers": sum(b.nbytes for b in model.buffers()),
        "LoRA weights": sum(p.nbytes for p in model.parameters() if p.requires_grad),
        "optimizer state": sum(storages.values()),
    }


def test_codellama_7b_shapes_train_in_4_bits_and_match_the_plan(codellama_7b_layer, tmp_path, stdlib_rows):
    data = write_jsonl(tmp_path / "rows.jsonl", stdlib_rows[:8])
    recipe = make_recipe(tmp_path, codellama_7b_layer, data,
                         lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                         data={"max_length": 32, "validation": 0},
                         train={"max_steps": 2, "micro_batch_size": 2, "optimizer": "adamw_8bit", "save_steps": 100})
    grads = GradientBytes()
    trainer = train_briefly(recipe, grads)
    planned = plan_recipe(recipe, device="cpu")
    assert planned.shapes == CODELLAMA_7B_LAYER  # read from the saved config.json

    real = real_bytes(trainer.model, trainer.optimizer.optimizer)
    assert {name: planned.part(name) for name in real} == real
    assert grads.seen == [planned.part("LoRA gradients")] * 2
    assert trainer.state.global_step == 2 and all(map(torch.isfinite, (torch.tensor(h["loss"]) for h in trainer.state.log_history if "loss" in h)))

    trainer.save_model(str(tmp_path / "adapter"))
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        saved = sum(f.get_tensor(k).nbytes for k in f.keys())
    assert saved == planned.part("LoRA weights")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 16


def test_the_same_plan_from_shapes_and_from_the_recipe(codellama_7b_layer, tmp_path, alpaca_file):
    recipe = make_recipe(tmp_path, codellama_7b_layer, alpaca_file)
    assert plan_recipe(recipe).parts == plan(CODELLAMA_7B_LAYER, settings(recipe)).parts
