"""Loading: LoRA gradients through the 4-bit base are exact, tokenizer quirks, RoPE overrides, 8-bit and plain LoRA."""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.functional as F
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from qlcode.models import load_recipe_base, load_tokenizer
from qlcode.train import trainable_model

from conftest import make_recipe


def _ids(tok) -> torch.Tensor:
    return tok(["def add(a, b):\n    return a + b\n"], return_tensors="pt")["input_ids"]


def _lora_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _randomize_lora_b(model) -> None:
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.05  # B = 0 at init would zero A's gradient


def _reference(tiny_base, qmodel) -> torch.nn.Module:
    """The same network in fp32 with every 4-bit weight dequantized, carrying the same LoRA weights."""
    ref = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    qmods = dict(qmodel.base_model.model.named_modules())
    for name, mod in ref.named_modules():
        q = qmods.get(name)
        if isinstance(mod, torch.nn.Linear) and q is not None and hasattr(q, "base_layer"):
            w = q.base_layer.weight
            mod.weight.data = F.dequantize_4bit(w.data, w.quant_state).float()
    cfg = qmodel.peft_config["default"]
    ref = get_peft_model(ref, LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                         target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    ref.load_state_dict({k: v for k, v in qmodel.state_dict().items() if "lora_" in k}, strict=False)
    return ref


def _check_against_reference(tmp_path, tiny_base, alpaca_file, keep_fix: bool, init: str = "default") -> float:
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, lora={"init": init})
    tok = load_tokenizer(recipe.model.base)
    model = trainable_model(recipe)
    if not keep_fix:
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
    _randomize_lora_b(model)
    ids = _ids(tok)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # an eval-mode forward without grad, as in evaluation
    model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    model.train()
    got = _lora_grads(model, ids)
    ref = _lora_grads(_reference(tiny_base, model).train(), ids)
    assert got.keys() == ref.keys() and len(got) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    return max(((got[k] - ref[k]).norm() / ref[k].norm()).item() for k in got)


@pytest.mark.parametrize("init", ["default", "loftq"])  # loftq dequantizes every 4-bit weight at start-up
def test_lora_gradients_through_4bit_base_equal_dequantized_reference(tmp_path, tiny_base, alpaca_file, init):
    assert _check_against_reference(tmp_path, tiny_base, alpaca_file, keep_fix=True, init=init) < 1e-5


@pytest.mark.skipif(not F.has_avx512bf16(), reason="the hazard exists only on CPUs with avx512_bf16")
def test_without_the_fix_gradients_are_wrong_on_this_cpu(tmp_path, tiny_base, alpaca_file):
    """The control: proves the test above would catch the bitsandbytes repacking hazard."""
    assert _check_against_reference(tmp_path, tiny_base, alpaca_file, keep_fix=False) > 0.1


def test_tokenizer_quirks(tiny_base):

    tok = load_tokenizer(str(tiny_base), template="codellama-instruct")
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "a + b"}], tokenize=False)
    assert text == "<s>[INST] Sum? [/INST] a + b </s>"
    assert tok.convert_tokens_to_ids(["<PRE>", "<SUF>", "<MID>", "<EOT>"]) == [3, 4, 5, 6]


def test_long_context_keys_reach_the_model_config(tmp_path, tiny_base, alpaca_file):
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, quant={"bits": None},
                         model={"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0},
                                "max_position_embeddings": 4096})
    cfg = load_recipe_base(recipe).config
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    assert cfg.rope_parameters["rope_type"] == "linear" and cfg.rope_parameters["factor"] == 4.0
    assert cfg.max_position_embeddings == 4096


@pytest.mark.parametrize("bits,layer", [(4, bnb.nn.Linear4bit), (8, bnb.nn.Linear8bitLt), (None, torch.nn.Linear)])
def test_quantization_choices_load_and_train(tmp_path, tiny_base, alpaca_file, bits, layer):
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, quant={"bits": bits})
    model = trainable_model(recipe)
    proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(proj.base_layer) is layer
    tok = load_tokenizer(recipe.model.base)
    grads = _lora_grads(model, _ids(tok))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for k, g in grads.items() if "lora_B" in k)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tmp_path, tiny_base, alpaca_file):
    grads = []
    for gc in (False, True):
        recipe = make_recipe(tmp_path, tiny_base, alpaca_file, train={"gradient_checkpointing": gc})
        model = trainable_model(recipe)
        _randomize_lora_b(model)
        assert model.base_model.model.is_gradient_checkpointing == gc
        grads.append(_lora_grads(model.train(), _ids(load_tokenizer(recipe.model.base))))
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


def test_unknown_hub_base_is_a_clear_error(tmp_path, alpaca_file, monkeypatch):
    from qlcode.errors import ModelError

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: patch the constant
    recipe = make_recipe(tmp_path, "nobody-here/no-such-model", alpaca_file)
    with pytest.raises(ModelError, match=r"^model.base: cannot load a tokenizer from 'nobody-here/no-such-model'"):
        load_tokenizer(recipe.model.base)
    with pytest.raises(ModelError, match=r"^model.base: cannot load 'nobody-here/no-such-model'"):
        load_recipe_base(recipe)
