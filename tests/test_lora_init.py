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

from qlcode.errors import ModelError, QlcodeError, RecipeError
from qlcode.export.merge import merge
from qlcode.models import Quantization, load_base, with_lora
from qlcode.train import train

from conftest import make_recipe

PROBE = "def add(a, b):\n    return a + b\n"


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PEFT's replace_lora_weights_loftq computes on a CUDA or XPU GPU only")
def test_loftq_fits_the_adapter_to_the_quantization_error(tiny_base):
    import bitsandbytes.functional as F

    full = load_file(tiny_base / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].cuda()
    gaps = {}
    for init in ("default", "loftq"):
        model = with_lora(load_base(str(tiny_base), Quantization(bits=4)), r=8, alpha=16, dropout=0.0,
                          target_modules=["q_proj"], gradient_checkpointing=False, init=init)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        w4 = layer.base_layer.weight
        dequantized = F.dequantize_4bit(w4.data, w4.quant_state).float()
        lora = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        gaps[init] = ((full - dequantized).norm().item(), (full - dequantized - lora.detach()).norm().item())
    assert gaps["default"][0] == gaps["default"][1]  # B starts at zero: the 4-bit error stays
    assert gaps["loftq"][0] == gaps["default"][0]  # LoftQ leaves the 4-bit base as it is ...
    assert gaps["loftq"][1] < 0.9 * gaps["loftq"][0]  # ... and its adapter takes up part of the error (rank 8 of 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU LoftQ runs: the test above checks it")
def test_loftq_without_a_gpu_says_so(tiny_base):
    with pytest.raises(ModelError, match=r"^lora.init: loftq runs PEFT's replace_lora_weights_loftq, which computes on a CUDA "
                                         r"\(or XPU\) GPU, and this machine has none: use lora.init: default here$"):
        with_lora(load_base(str(tiny_base), Quantization(bits=4)), r=8, alpha=16, dropout=0.0, target_modules=["q_proj"],
                  gradient_checkpointing=False, init="loftq")


def test_a_loftq_adapter_is_not_merged_into_the_full_precision_base(tmp_path, tiny_base, alpaca_file):
    make_recipe(tmp_path, tiny_base, alpaca_file, lora={"init": "loftq"})  # a finished LoftQ run, as a GPU leaves it
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text((tmp_path / "recipe.yaml").read_text())
    (run / "adapter_config.json").write_text("{}")
    (run / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(QlcodeError, match="is a LoftQ adapter: it holds the 4-bit base's quantization error, so merging it "
                                          "into the full-precision base would count that error twice"):
        merge(run, tmp_path / "merged", dtype="fp32")
    assert not (tmp_path / "merged").exists()


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
