"""Fused QLoRA blocks (qlcode.kernels.fused_blocks) against PEFT over bitsandbytes: outputs, LoRA and
input gradients with the recipes' LoRA dropout, the gradcheck of each function, the plain path kept
where the blocks do not apply. The bytes they save are checked in tests/test_plan.py."""

from __future__ import annotations

import bitsandbytes.functional as BF
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from qlcode.kernels.fused_blocks import LoRAMLP, LoRAProjections, Projection, patch_blocks
from qlcode.kernels.qlora_linear import REFERENCE, TRITON, patch_model


def _tiny(tmp_path, **extra):
    # widths that are multiples of 64: bitsandbytes 0.50's CPU dequantization (the reference path) is
    # wrong for rows of other lengths (tests/test_kernels.py)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _step(path, patched: bool, dropout: float, targets, autocast: bool = False):
    """(loss, gradient of the input embeddings, LoRA gradients) of one training forward and backward."""
    from peft import LoraConfig, get_peft_model

    from qlcode.models import load_base

    torch.manual_seed(0)
    model = get_peft_model(load_base(str(path)), LoraConfig(r=4, lora_dropout=dropout, target_modules=targets,
                                                            init_lora_weights=False)).train()
    if patched:
        patch_model(model, TRITON)
        assert patch_blocks(model, TRITON) == 4  # 2 layers x (MLP, attention)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
    torch.manual_seed(5)  # the same dropout draws for both
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(inputs_embeds=embeddings, labels=ids).loss
    loss.backward()
    return loss.item(), embeddings.grad, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("dropout", "targets"), [(0.05, "all-linear"), (0.0, "all-linear"), (0.1, ["q_proj", "v_proj", "down_proj"])],
                         ids=["recipes-dropout", "no-dropout", "some-targets"])
def test_fused_blocks_equal_peft_over_bitsandbytes(tmp_path, dropout, targets):
    """fp32 on CPU: the same masks drawn in PEFT's order, the same 4-bit weights; only the order of
    the sums differs (measured 6e-7 relative; 1e-5 leaves room for other CPUs' blocking)."""
    path = _tiny(tmp_path)
    want_loss, want_x, want = _step(path, False, dropout, targets)
    loss, got_x, got = _step(path, True, dropout, targets)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5 * want_x.abs().max().item())
    assert got.keys() == want.keys() and len(got) == 2 * 2 * (7 if targets == "all-linear" else 3)
    for name in want:
        assert (got[name] - want[name]).norm() <= 1e-5 * want[name].norm(), name


def test_fused_blocks_under_bf16_autocast_are_as_close_to_fp32_as_peft(tmp_path):
    """The GPU recipes' precision: against the fp32 gradients, the fused blocks' error is within 1.5x
    PEFT's own bf16 error (they round in other places, not more)."""
    path = _tiny(tmp_path)
    exact_loss, exact_x, exact = _step(path, False, 0.05, "all-linear")
    peft_loss, peft_x, peft = _step(path, False, 0.05, "all-linear", autocast=True)
    loss, got_x, got = _step(path, True, 0.05, "all-linear", autocast=True)
    assert abs(loss - exact_loss) <= 2 * abs(peft_loss - exact_loss) + 1e-3
    assert all(g.dtype == torch.float32 for g in got.values()), "gradients of the fp32 masters stay fp32"
    assert (got_x - exact_x).norm() <= 1.5 * (peft_x - exact_x).norm()
    for name in exact:
        assert (got[name] - exact[name]).norm() <= 1.5 * (peft[name] - exact[name]).norm() + 1e-6 * exact[name].norm(), name


def _projection(out_f, in_f, dropout, seed, lora=True, r=3):
    torch.manual_seed(seed)
    packed, state = BF.quantize_4bit(torch.randn(out_f, in_f) * 0.05, blocksize=64, compress_statistics=True, quant_type="nf4")
    state.dtype = torch.float64
    a = (torch.randn(r, in_f, dtype=torch.float64) * 0.1).requires_grad_() if lora else None
    b = (torch.randn(out_f, r, dtype=torch.float64) * 0.1).requires_grad_() if lora else None
    return Projection(packed, state, 0.7 if lora else 0.0, dropout if lora else 0.0), a, b


def test_mlp_function_gradcheck_with_dropout_and_a_bare_projection():
    """float64, the torch reference's dequantization: forward's dropout masks drawn again in backward."""
    projections = [_projection(64, 32, 0.3, 0), _projection(64, 32, 0.0, 1, lora=False), _projection(32, 64, 0.3, 2)]
    lora = [t for _, a, b in projections for t in (a, b)]
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)

    def f(x, *weights):
        torch.manual_seed(7)  # every evaluation draws the same masks
        return LoRAMLP.apply(x, tuple(p for p, _, _ in projections), REFERENCE, *weights)

    assert torch.autograd.gradcheck(f, (x, *lora), eps=1e-6, atol=1e-6)


def test_projections_function_gradcheck_with_dropout_and_an_unused_output():
    projections = [_projection(32, 32, 0.2, 0), _projection(16, 32, 0.2, 1), _projection(16, 32, 0.0, 2, lora=False)]
    lora = [t for _, a, b in projections for t in (a, b)]
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)

    def f(x, *weights):
        torch.manual_seed(7)
        q, k, _ = LoRAProjections.apply(x, tuple(p for p, _, _ in projections), REFERENCE, *weights)
        return q, k  # v takes no part: its gradient arrives as None

    assert torch.autograd.gradcheck(f, (x, *lora), eps=1e-6, atol=1e-6)


def test_a_biased_or_disabled_projection_keeps_the_plain_path(tmp_path):
    """Llama with attention biases: attention stays plain, the MLP is fused, the result PEFT's;
    with the adapter disabled every block takes the plain path and gives the base's output."""
    from peft import LoraConfig, get_peft_model

    from qlcode.models import load_base

    path = _tiny(tmp_path, attention_bias=True)
    torch.manual_seed(0)
    model = get_peft_model(load_base(str(path)), LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False,
                                                            target_modules="all-linear")).train()
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    want = model(input_ids=ids).logits
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    patch_model(model, TRITON)
    patch_blocks(model, TRITON)
    calls = []
    LoRAProjections_apply = LoRAProjections.apply
    try:
        LoRAProjections.apply = lambda *a: calls.append(1) or LoRAProjections_apply(*a)
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base, rtol=1e-5, atol=1e-5)
    finally:
        LoRAProjections.apply = LoRAProjections_apply
    assert calls == [], "biased q, k, v: the attention block took the plain path"


def test_other_families_keep_the_plain_path_and_say_so(tmp_path, capsys):
    config = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    from qlcode.models import load_base

    model = load_base(str(tmp_path / "mistral"))
    assert patch_blocks(model, TRITON) == 0
    assert "quant.fused_blocks: mistral keeps the plain path (the fused QLoRA blocks are Llama's)" in capsys.readouterr().err
