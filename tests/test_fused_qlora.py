"""Fused QLoRA blocks (qlcode.kernels.fused_blocks) against PEFT over bitsandbytes, on Llama and Qwen2
(q, k, v biases, a sliding-window layer): outputs, LoRA and input gradients with the recipes' LoRA
dropout, a short training run, the gradcheck of each function, the plain path kept where the blocks
do not apply. The bytes they save are checked in tests/test_plan.py."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import bitsandbytes.functional as BF
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from qlcode.kernels import FUSED_MODEL_TYPES
from qlcode.kernels.fused_blocks import LoRAMLP, LoRAProjections, Projection, patch_blocks
from qlcode.kernels.qlora_linear import REFERENCE, TRITON, Kernels, patch_model


def _tiny(tmp_path, family: str = "llama", **extra):
    """A 2-layer model saved to disk. Qwen2: q, k and v biased (drawn at random: the zeros transformers
    initialises them to would hide a missing bias), layer 1 in a sliding window of 8 tokens."""
    # widths that are multiples of 64: bitsandbytes 0.50's CPU dequantization (the reference path) is
    # wrong for rows of other lengths (tests/test_kernels.py)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=1))
        assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, 8]
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "tiny")
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


@pytest.mark.parametrize(("family", "dropout", "targets"), [
    ("llama", 0.05, "all-linear"), ("llama", 0.0, "all-linear"), ("llama", 0.1, ["q_proj", "v_proj", "down_proj"]),
    ("qwen2", 0.05, "all-linear"), ("qwen2", 0.1, ["q_proj", "v_proj", "down_proj"]),
], ids=["recipes-dropout", "no-dropout", "some-targets", "qwen2-recipes-dropout", "qwen2-some-targets"])
def test_fused_blocks_equal_peft_over_bitsandbytes(tmp_path, family, dropout, targets):
    """fp32 on CPU: the same masks drawn in PEFT's order, the same 4-bit weights and biases; only the
    order of the sums differs (measured 6e-7 relative; 1e-5 leaves room for other CPUs' blocking).
    Qwen2's k bias is bare where k_proj is not a target."""
    path = _tiny(tmp_path, family)
    want_loss, want_x, want = _step(path, False, dropout, targets)
    loss, got_x, got = _step(path, True, dropout, targets)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5 * want_x.abs().max().item())
    assert got.keys() == want.keys() and len(got) == 2 * 2 * (7 if targets == "all-linear" else 3)
    for name in want:
        assert (got[name] - want[name]).norm() <= 1e-5 * want[name].norm(), name


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_blocks_under_bf16_autocast_compute_in_bf16_as_close_to_fp32_as_peft(tmp_path, family, monkeypatch):
    """The GPU recipes' precision: every fused function computes in autocast's bf16 (until
    2026-12-02 they asked for the dtype after turning autocast off and ran in fp32), and against
    the fp32 gradients their error is PEFT's own bf16 error in size: over all LoRA gradients within
    1.25x (measured 1.06x Llama, 1.01x Qwen2), each tensor within 2x (at most 1.40x, 1.57x: they
    round in other places, gate and up in bf16 where PEFT keeps fp32), the input gradient within
    1.5x (1.00x, 1.23x)."""
    path = _tiny(tmp_path, family)
    exact_loss, exact_x, exact = _step(path, False, 0.05, "all-linear")
    peft_loss, peft_x, peft = _step(path, False, 0.05, "all-linear", autocast=True)
    dtypes = []
    for function in (LoRAMLP, LoRAProjections):
        monkeypatch.setattr(function, "apply", lambda x, *a, o=function.apply: dtypes.append(x.dtype) or o(x, *a))
    loss, got_x, got = _step(path, True, 0.05, "all-linear", autocast=True)
    assert dtypes == [torch.bfloat16] * 6, "2 layers x (q/k/v, o, MLP)"
    assert abs(loss - exact_loss) <= 2 * abs(peft_loss - exact_loss) + 1e-3
    assert all(g.dtype == torch.float32 for g in got.values()), "gradients of the fp32 masters stay fp32"
    assert (got_x - exact_x).norm() <= 1.5 * (peft_x - exact_x).norm()

    def error(grads):
        return torch.stack([(grads[n] - exact[n]).norm() / exact[n].norm() for n in exact]).norm()

    assert error(got) <= 1.25 * error(peft)
    for name in exact:
        assert (got[name] - exact[name]).norm() <= 2 * (peft[name] - exact[name]).norm() + 1e-6 * exact[name].norm(), name


def _projection(out_f, in_f, dropout, seed, lora=True, r=3):
    torch.manual_seed(seed)
    packed, state = BF.quantize_4bit(torch.randn(out_f, in_f) * 0.05, blocksize=64, compress_statistics=True, quant_type="nf4")
    state.dtype = torch.float64
    a = (torch.randn(r, in_f, dtype=torch.float64) * 0.1).requires_grad_() if lora else None
    b = (torch.randn(out_f, r, dtype=torch.float64) * 0.1).requires_grad_() if lora else None
    return Projection(packed, state, 0.7 if lora else 0.0, dropout if lora else 0.0), a, b


@pytest.mark.parametrize("tile", [10, 4], ids=["one-pass", "tiles-of-4"])
def test_mlp_function_gradcheck_with_dropout_and_a_bare_projection(tile):
    """float64, the torch reference's dequantization: forward's dropout masks drawn again in backward;
    10 tokens in one pass, or in tiles of 4, 4 and 2 (each recomputed in backward)."""
    projections = [_projection(64, 32, 0.3, 0), _projection(64, 32, 0.0, 1, lora=False), _projection(32, 64, 0.3, 2)]
    lora = [t for _, a, b in projections for t in (a, b)]
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)

    def f(x, *weights):
        torch.manual_seed(7)  # every evaluation draws the same masks
        return LoRAMLP.apply(x, tuple(p for p, _, _ in projections), REFERENCE, tile, *weights)

    assert torch.autograd.gradcheck(f, (x, *lora), eps=1e-6, atol=1e-6)


def _mlp_run(x, projections, lora, tile: int, seed: int = 7):
    """(output, gradient of x, LoRA gradients) of the MLP function on x, for a fixed output gradient."""
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)
    y = LoRAMLP.apply(x, projections, REFERENCE, tile, *lora)
    grads = torch.autograd.grad(y, [x, *[t for t in lora if t is not None]], torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y, grads[0], grads[1:]


def test_the_tiled_mlp_equals_one_pass_without_dropout():
    """float64: 21 tokens in tiles of 8, 8 and 5 against one pass: output and input gradient bit for
    bit, LoRA gradients up to the order of the sums over tiles."""
    projections = [_projection(64, 32, 0.0, 0), _projection(64, 32, 0.0, 1), _projection(32, 64, 0.0, 2)]
    lora = [t for _, a, b in projections for t in (a, b)]
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    one, tiled = (_mlp_run(x, tuple(p for p, _, _ in projections), lora, tile) for tile in (21, 8))
    assert torch.equal(tiled[0], one[0]) and torch.equal(tiled[1], one[1])
    for got, want in zip(tiled[2], one[2]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_tiles_draw_dropout_tile_by_tile():
    """With dropout, tiles of 8 draw what the one-pass function draws on each tile in turn (tile 0's
    gate, up, down masks, then tile 1's): output and input gradient equal the concatenation of
    those runs, LoRA gradients their sum; and they are not the one-pass function's draw."""
    built = [_projection(64, 32, 0.3, 0), _projection(64, 32, 0.3, 1), _projection(32, 64, 0.3, 2)]
    projections, lora = tuple(p for p, _, _ in built), [t for _, a, b in built for t in (a, b)]
    x = torch.randn(20, 32, dtype=torch.float64)
    y, grad_x, grads = _mlp_run(x, projections, lora, 8)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    torch.manual_seed(7)
    parts = []
    for rows in (slice(0, 8), slice(8, 16), slice(16, 20)):
        xt = x[rows].clone().requires_grad_()
        yt = LoRAMLP.apply(xt, projections, REFERENCE, 8, *lora)
        parts.append((yt, *torch.autograd.grad(yt, [xt, *lora], g[rows])))
    assert torch.equal(y, torch.cat([p[0] for p in parts])) and torch.equal(grad_x, torch.cat([p[1] for p in parts]))
    for i, got in enumerate(grads):
        torch.testing.assert_close(got, sum(p[2 + i] for p in parts), rtol=1e-12, atol=0)
    assert not torch.equal(y, _mlp_run(x, projections, lora, 20)[0])


def test_projections_function_gradcheck_with_dropout_biases_and_an_unused_output():
    """q and k with Qwen2's frozen biases: forward adds them, backward owes them nothing."""
    projections = [_projection(32, 32, 0.2, 0), _projection(16, 32, 0.2, 1), _projection(16, 32, 0.0, 2, lora=False)]
    projections[:2] = [(replace(p, bias=torch.randn(p.state.shape[0], dtype=torch.float64)), a, b) for p, a, b in projections[:2]]
    lora = [t for _, a, b in projections for t in (a, b)]
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    without = LoRAProjections.apply(x, tuple(replace(p, dropout=0.0, bias=None) for p, _, _ in projections), REFERENCE, *lora)
    with_bias = LoRAProjections.apply(x, tuple(replace(p, dropout=0.0) for p, _, _ in projections), REFERENCE, *lora)
    torch.testing.assert_close(with_bias[0] - without[0], projections[0][0].bias.expand(3, -1), rtol=0, atol=1e-12)

    def f(x, *weights):
        torch.manual_seed(7)
        q, k, _ = LoRAProjections.apply(x, tuple(p for p, _, _ in projections), REFERENCE, *weights)
        return q, k  # v takes no part: its gradient arrives as None

    assert torch.autograd.gradcheck(f, (x, *lora), eps=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Careful, disabling adapter layers with bias:UserWarning")  # the biases are not trained yet
def test_a_trained_bias_or_disabled_adapter_keeps_the_plain_path(tmp_path):
    """Qwen2 with PEFT's bias="all" (q, k, v biases trained): attention stays plain, the MLP (no bias)
    is fused, the result PEFT's; with the adapter disabled every block takes the plain path and
    gives the base's output."""
    from peft import LoraConfig, get_peft_model

    from qlcode.models import load_base

    path = _tiny(tmp_path, "qwen2")
    torch.manual_seed(0)
    model = get_peft_model(load_base(str(path)), LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False,
                                                            target_modules="all-linear", bias="all")).train()
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.bias.requires_grad
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    want = model(input_ids=ids).logits
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    patch_model(model, TRITON)
    assert patch_blocks(model, TRITON) == 4
    calls = []
    apply = {LoRAProjections: LoRAProjections.apply, LoRAMLP: LoRAMLP.apply}
    try:
        for function, original in apply.items():
            function.apply = lambda *a, f=function, o=original: calls.append(f.__name__) or o(*a)
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        assert calls == ["LoRAMLP"] * 2, "trained q, k, v biases: the attention blocks took the plain path"
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base, rtol=1e-5, atol=1e-5)
        assert calls == ["LoRAMLP"] * 2
    finally:
        for function, original in apply.items():
            function.apply = original


@pytest.mark.parametrize("model_type", [*FUSED_MODEL_TYPES, "starcoder2"])
def test_the_planned_families_are_the_patched_ones_and_starcoder2_says_so(model_type, capsys):
    """patch_blocks fuses both blocks of every layer of each model type qlcode plan counts fused
    (FUSED_MODEL_TYPES), and none of StarCoder2's, with the one line the user sees."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)
    patched = patch_blocks(AutoModelForCausalLM.from_config(config), TRITON)
    err = capsys.readouterr().err
    if model_type in FUSED_MODEL_TYPES:
        assert patched == 4 and err == ""
    else:
        assert patched == 0
        assert "quant.fused_blocks: starcoder2 keeps the plain path (the fused QLoRA blocks are Llama's and Qwen2's)" in err


def test_a_qwen2_training_run_through_the_fused_blocks_is_peft_s(tmp_path):
    """Four AdamW steps on one batch of the tiny Qwen2 with the recipes' dropout (0.05), each step
    drawing the same masks on both paths: every loss equals PEFT + bitsandbytes' to 1e-5 relative
    (fp32; the sums' order differs, and the steps carry it on), and the loss falls."""
    from peft import LoraConfig, get_peft_model

    from qlcode.models import load_base

    path = _tiny(tmp_path, "qwen2")
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    runs = []
    for patched in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(load_base(str(path)), LoraConfig(r=4, lora_dropout=0.05, target_modules="all-linear")).train()
        if patched:
            patch_model(model, TRITON)
            assert patch_blocks(model, TRITON) == 4
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for step in range(4):
            torch.manual_seed(10 + step)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append(losses)
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)
    assert runs[1][-1] < runs[1][0]


def test_a_patched_qwen2_decodes_like_peft_over_bitsandbytes(tmp_path):
    """Generation through the fused blocks on the tiny Qwen2: a 20-token prefill (dequantize +
    matmul) then 8 new tokens through bitsandbytes' matmul (decoding's few rows), each adding the
    q, k, v biases, across the sliding-window layer: the same tokens, logits to 1e-4."""
    from peft import LoraConfig, get_peft_model

    from qlcode.models import load_base

    prompt = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    model = get_peft_model(load_base(str(_tiny(tmp_path, "qwen2"))),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        return out.sequences, torch.stack(out.logits)

    want = run()
    patch_model(model, TRITON)
    assert patch_blocks(model, TRITON) == 4
    got = run()
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


DENSE = Kernels(lambda packed, state, dtype: packed.to(dtype), None)  # "packed" is the weight in the compute dtype: no copy


def _peak_bytes(run) -> int:
    """The most bytes `run` holds allocated at once beyond what existed before it (CPU: the
    benchmarks' profiler count, benchmarks/harness.py)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from harness import cpu_peak_bytes

    return cpu_peak_bytes(run)


ALL_MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize(("tokens", "tile", "hidden", "inter", "r", "dropout", "targets", "dtype"), [
    (96, 96, 128, 344, 4, 0.05, ALL_MLP, torch.bfloat16),  # one pass, 7B's intermediate/hidden ratio
    (192, 64, 128, 344, 4, 0.05, ALL_MLP, torch.bfloat16),  # tiles
    (384, 64, 128, 344, 8, 0.05, ALL_MLP, torch.bfloat16),  # more tokens, the same tile
    (192, 64, 128, 344, 4, 0.0, ALL_MLP, torch.bfloat16),
    (192, 64, 64, 176, 4, 0.1, ("up_proj", "down_proj"), torch.bfloat16),  # gate bare
    (192, 64, 128, 344, 4, 0.05, ALL_MLP, torch.float16),
    (192, 64, 128, 344, 4, 0.05, ALL_MLP, torch.float32),  # CPU plans' dtype: no widening copies
    (640, 640, 128, 344, 4, 0.05, ALL_MLP, torch.bfloat16),  # SwiGLU in chunks of 256, 256 and 128 tokens
    (1024, 512, 128, 344, 4, 0.05, ALL_MLP, torch.bfloat16),  # chunks inside tiles
    (4352, 4352, 64, 176, 4, 0.05, ALL_MLP, torch.bfloat16),  # 17 chunks: down's input gradient is the peak
    (4352, 4352, 64, 176, 4, 0.0, ALL_MLP, torch.bfloat16),  # ... the SwiGLU's without dropout's copy
], ids=["one-pass", "tiled", "longer", "no-dropout", "gate-bare", "fp16", "fp32", "chunks", "tiled-chunks",
        "down-input-peak", "long-no-dropout"])
def test_the_mlp_backwards_peak_is_the_plans(tokens, tile, hidden, inter, r, dropout, targets, dtype):
    """The peak bytes of the fused MLP's backward in bf16, fp16 (the GPU's dtypes, on CPU) or fp32, beyond
    what forward saved and the gradient it receives, are qlcode plan's count
    (fused_mlp_backward_bytes) exactly; 4-bit dequantization is left out (dense weights given to
    the function as they are), since the plan counts it apart. Where the peak falls on an op with a
    Python number (dropout's scale, fp32's 1 - sigmoid), CPU holds it as a 0-dim tensor and its cast
    as well: those few bytes (at most 16) are the only ones the plan leaves out."""
    from qlcode.plan import Settings, Shapes
    from qlcode.plan.memory import fused_mlp_backward_bytes

    torch.manual_seed(0)
    projections, lora = [], []
    for name, (out_f, in_f) in zip(("gate_proj", "up_proj", "down_proj"), ((inter, hidden), (inter, hidden), (hidden, inter))):
        trained = name in targets
        projections.append(Projection(torch.randn(out_f, in_f, dtype=dtype) * 0.05, None, 2.0 if trained else 0.0,
                                      dropout if trained else 0.0))
        lora += [torch.randn(r, in_f, requires_grad=True), torch.randn(out_f, r, requires_grad=True)] if trained else [None, None]
    x = torch.randn(tokens, hidden, dtype=dtype, requires_grad=True)
    y = LoRAMLP.apply(x, tuple(projections), DENSE, tile, *lora)
    grad = torch.randn_like(y)
    measured = _peak_bytes(lambda: y.backward(grad))
    shapes = Shapes(hidden=hidden, intermediate=inter, layers=1, heads=4, kv_heads=4, head_dim=hidden // 4, vocab=100)
    planned = fused_mlp_backward_bytes(shapes, Settings(compute_bytes=dtype.itemsize, lora_r=r, dropout=dropout, targets=targets,
                                                        micro_batch=1, max_length=tokens, fused=True, mlp_tile=tile,
                                                        mlp_tiled_above=tile))
    assert 0 <= measured - planned <= 16, (measured, planned)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_chunked_swiglu_is_its_formula_bit_for_bit(dtype):
    """Forward and gradient, in chunks of SWIGLU_ROWS tokens (600 rows: 256, 256, 88) with fewer
    fp32 temporaries, give the whole-tensor expressions' values exactly (widened to fp32). One
    thread: CPU's threads split a tensor where they like, and an element in a vectorised loop's
    scalar tail can round its sigmoid differently, chunked or not."""
    from qlcode.kernels import SWIGLU_ROWS
    from qlcode.kernels.fused_blocks import swiglu, swiglu_backward, wide

    e, g, dh = (torch.randn(600, 517, generator=torch.Generator().manual_seed(i)).mul(3).to(dtype) for i in range(3))
    assert SWIGLU_ROWS < e.shape[0] and SWIGLU_ROWS % 64 == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ef, gf, dhf = wide(e), wide(g), wide(dh)
        sig = torch.sigmoid(ef)
        h = swiglu(e, g)
        de, dg = swiglu_backward(e, g, dh)
        assert torch.equal(h, (torch.nn.functional.silu(ef) * gf).to(dtype))
        assert torch.equal(de, (dhf * gf * sig * (1 + ef * (1 - sig))).to(dtype))
        assert torch.equal(dg, (dhf * ef * sig).to(dtype))
    finally:
        torch.set_num_threads(threads)
