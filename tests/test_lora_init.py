"""lora.init: PiSSA and OLoRA adapters saved as plain LoRAs that reproduce the trained model on the
unchanged base (and merge within fp32 tolerance); LoftQ fitted to a 4-bit base's quantization error;
the combinations that cannot keep that fidelity refused in the recipe."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from qlcode.builtin import model_path
from qlcode.errors import RecipeError
from qlcode.export.merge import merge
from qlcode.models import Quantization, load_base, load_tokenizer, with_lora
from qlcode.train import train

from conftest import make_recipe

PROBE = "def add(a, b):\n    return a + b\n"
MICRO = "builtin:micro-codellama"


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(PROBE, return_tensors="pt")).logits.float()


class TrainedLogits(TrainerCallback):
    """The model's logits on the probe as training leaves it: residual base + PiSSA/OLoRA adapter, in memory."""

    def __init__(self, tok) -> None:
        self.tok, self.logits = tok, None

    def on_train_end(self, args, state, control, model=None, **kw):
        was = model.training
        model.eval()
        self.logits = _logits(model, self.tok)
        model.train(was)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_save_plain_loras_that_reproduce_the_trained_model(tmp_path, tiny_base, alpaca_file, init):
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, quant={"bits": None}, lora={"init": init, "r": 4, "alpha": 8},
                         train={"max_steps": 3, "save_steps": 3})
    tok = AutoTokenizer.from_pretrained(tiny_base)
    trained = TrainedLogits(tok)
    train(recipe, extra_callbacks=[trained])
    run = tmp_path / "run"
    config = json.loads((run / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)  # rank doubled: delta from the init
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)  # the original weights, unchanged
    saved = _logits(PeftModel.from_pretrained(base, str(run)).eval(), tok)
    # fp32: W_res + BA against W + (BA - B0A0) differ only in rounding (measured ~1e-6)
    assert (saved - trained.logits).abs().max() < 1e-4
    # why the conversion: the raw adapter (a checkpoint's) as plain LoRA arithmetic on the base, as merge, llama.cpp or
    # vLLM apply an adapter, is far off (PEFT alone reproduces it, by decomposing the base again at every load)
    raw = run / "checkpoints" / "checkpoint-3"
    as_plain = LoraConfig.from_pretrained(raw)
    as_plain.init_lora_weights = True
    unconverted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), str(raw),
                                            config=as_plain).eval()
    assert (_logits(unconverted, tok) - trained.logits).abs().max() > 0.1
    report = merge(run, tmp_path / "merged", dtype="fp32")
    merged = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval(), tok)
    assert report.max_logit_diff < 1e-4 and (merged - trained.logits).abs().max() < 1e-4


def _micro_lora(init: str, r: int):
    """The micro model in 4-bit (as training loads it on this machine) with a LoRA on every linear layer, alpha = 2r."""
    return with_lora(load_base(MICRO, Quantization(bits=4)), r=r, alpha=2 * r, dropout=0.0, target_modules="all-linear",
                     gradient_checkpointing=False, init=init).eval()


def test_loftq_adapter_is_the_low_rank_svd_of_the_quantization_error():
    import bitsandbytes.functional as F
    from peft.tuners.lora import Linear4bit

    r = 16
    model = _micro_lora("loftq", r)
    full = load_file(model_path("micro-codellama") / "model.safetensors")
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(layers) == 4 * 7  # every linear layer of the 4 blocks
    for name, layer in layers.items():
        w = layer.base_layer.weight
        residual = full[f"{name}.weight"].float() - F.dequantize_4bit(w.data, w.quant_state).float()
        U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
        s = layer.scaling["default"]
        assert s == 2.0
        a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        # the best rank-r part of the residual, split evenly between B and A, divided by sqrt(scaling)
        torch.testing.assert_close(a, S[:r].sqrt()[:, None] * Vh[:r] / s ** 0.5, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b, U[:, :r] * S[:r].sqrt() / s ** 0.5, rtol=1e-4, atol=1e-6)
        fitted = U[:, :r] * S[:r] @ Vh[:r]
        torch.testing.assert_close(s * b @ a, fitted, rtol=1e-4, atol=1e-6)
        assert (residual - fitted).norm() < 0.97 * residual.norm()  # the adapter takes up part of the 4-bit error
        # why the division: B = L, A = R as PEFT sets them, scaled by 2, leave the weight error exactly where it was
        assert abs((residual - 2 * fitted).norm() / residual.norm() - 1) < 1e-4


def test_loftq_brings_the_4bit_model_closer_to_the_full_precision_one():
    tok = load_tokenizer(MICRO)
    ids = tok(["def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"],
              return_tensors="pt")
    with torch.no_grad():
        full = AutoModelForCausalLM.from_pretrained(model_path("micro-codellama"), dtype=torch.float32)(**ids).logits
        gap = {init: (_micro_lora(init, 64)(**ids).logits - full).abs().mean().item() for init in ("default", "loftq")}
    # measured: mean |logit gap| 0.156 for the 4-bit base (B = 0), 0.107 with LoftQ at rank 64 (0.134 at rank 16)
    assert gap["loftq"] < 0.8 * gap["default"], gap


def test_loftq_trains_with_qlcode_train_and_merges_into_the_dequantized_4bit_base(tmp_path, tiny_base, alpaca_file):
    from typer.testing import CliRunner

    from qlcode.cli import app

    make_recipe(tmp_path, tiny_base, alpaca_file, lora={"init": "loftq"}, train={"max_steps": 3, "save_steps": 3})
    res = CliRunner().invoke(app, ["train", str(tmp_path / "recipe.yaml")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    report = merge(run, tmp_path / "merged", dtype="fp32")
    assert report.into_4bit and report.max_logit_diff < 1e-4 and report.top1_agreement == 1.0
    assert "merged into that 4-bit base, dequantized" in (tmp_path / "merged" / "README.md").read_text()
    # checked here too, independently of merge's own check: the trained adapter on its 4-bit base ...
    tok = AutoTokenizer.from_pretrained(tiny_base)
    trained = _logits(PeftModel.from_pretrained(load_base(str(tiny_base), Quantization(bits=4)), str(run)).eval(), tok)
    merged = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval(), tok)
    assert (merged - trained).abs().max() < 1e-4
    # ... and what merging into the full-precision base would have given: the 4-bit error counted twice
    into_full = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32),
                                                  str(run)).eval(), tok)
    assert (into_full - trained).abs().max() > 100 * (merged - trained).abs().max()


@pytest.mark.parametrize("sections, message", [
    ({"lora": {"init": "pissa"}},
     "lora.init: pissa moves the base's principal part into the adapter, which qlcode converts back to a plain LoRA exactly "
     "only over a full-precision base: set quant.bits: none (or lora.init: loftq for a 4-bit base)"),
    ({"lora": {"init": "loftq"}, "quant": {"bits": None}},
     "lora.init: loftq fits the adapter to a 4-bit base's quantization error: it needs quant.bits: 4, got none"),
    ({"lora": {"init": "olora", "adapter": "adapters/sft"}, "quant": {"bits": None}},
     "lora.init: olora starts a new adapter, and lora.adapter continues 'adapters/sft': remove one of them"),
])
def test_combinations_without_fidelity_are_recipe_errors(tmp_path, tiny_base, alpaca_file, sections, message):
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: " + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        make_recipe(tmp_path, tiny_base, alpaca_file, **sections)
