"""4-bit kernels against bitsandbytes: the torch reference and the Triton kernels (interpreted on CPU;
compiled on a GPU, where the kernel-level tests run on CUDA tensors against bitsandbytes' CUDA kernels)."""

from __future__ import annotations

import bitsandbytes.functional as F
import pytest
import torch

from qlcode.kernels import nf4_reference as R
from qlcode.kernels.dequant_4bit import dequantize_4bit

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (out, in) of CodeLlama-7B/13B/34B's q, k, v, o, gate, up, down projections, each dimension / 32
ARCH = {"7B": (4096, 11008, 4096), "13B": (5120, 13824, 5120), "34B": (8192, 22016, 1024)}  # hidden, ffn, kv width
SHAPES = {f"{name}-{proj}": tuple(d // 32 for d in shape)
          for name, (h, f, kv) in ARCH.items()
          for proj, shape in {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (f, h), "up": (f, h), "down": (h, f)}.items()}


def _quantized(shape, quant_type="nf4", double=True, seed=0, device=DEVICE):
    torch.manual_seed(seed)
    w = (torch.randn(shape) * 0.02).to(device)
    q, state = F.quantize_4bit(w, blocksize=64, compress_statistics=double, quant_type=quant_type)
    return w, q, state


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_kernel_matches_reference_and_bitsandbytes_on_codellama_shapes(name):
    shape = SHAPES[name]
    _, q, state = _quantized(shape)
    # bitsandbytes 0.50's CPU dequantize_4bit is wrong for rows that are not a multiple of 64
    # (it treats blocks per row); those shapes are checked against the reference only
    bnb_ok = shape[1] % 64 == 0 or DEVICE.type == "cuda"
    for dtype in (torch.float32, torch.float16):
        got = dequantize_4bit(q, state, dtype)
        assert torch.equal(got, R.dequantize_4bit(q, state, dtype))
        if bnb_ok:
            assert torch.equal(got, F.dequantize_4bit(q, state).to(dtype))
    got = dequantize_4bit(q, state, torch.bfloat16).float()
    want = R.dequantize_4bit(q, state, torch.float32).to(torch.bfloat16).float()
    ulp = torch.finfo(torch.bfloat16).eps * want.abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    assert ((got - want).abs() <= ulp).all(), "bf16 within one ulp (the interpreter rounds its stores its own way)"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("shape", [(100, 37), (64, 64), (3, 1000), (4096, 64)])
def test_sizes_not_a_multiple_of_the_block_and_both_codes(quant_type, double, shape):
    _, q, state = _quantized(shape, quant_type, double)
    want = F.dequantize_4bit(q, state)
    assert torch.equal(R.dequantize_4bit(q, state), want)
    assert torch.equal(dequantize_4bit(q, state, torch.float32), want)


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float32])
def test_packed_weights_in_another_storage_dtype(storage):
    """quant.storage_dtype (FSDP) stores the same bytes in another container dtype."""
    from qlcode.kernels.qlora_linear import TRITON

    torch.manual_seed(0)
    w = (torch.randn(128, 192) * 0.02).to(DEVICE)
    q, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=storage)
    assert q.dtype == storage
    want = F.dequantize_4bit(q, state)
    assert torch.equal(R.dequantize_4bit(q, state), want) and torch.equal(dequantize_4bit(q, state, torch.float32), want)
    x = torch.randn(3, 192, device=DEVICE)
    torch.testing.assert_close(TRITON.matmul(x, q, state), x @ want.t())  # decoding's rows: bitsandbytes' matmul


def test_one_buffer_serves_every_layer():
    buffer = torch.empty(max(a * b for a, b in SHAPES.values()), dtype=torch.float16, device=DEVICE)
    for name in ("7B-q", "7B-gate", "7B-down"):
        _, q, state = _quantized(SHAPES[name])
        got = dequantize_4bit(q, state, torch.float16, out=buffer)
        assert got.data_ptr() == buffer.data_ptr() and torch.equal(got, R.dequantize_4bit(q, state, torch.float16))
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 buffer"):
        dequantize_4bit(q, state, torch.float32, out=buffer)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(256, 512), (1000, 640), (100, 37)])
def test_reference_quantize_gives_bitsandbytes_bytes(quant_type, shape):
    w, q, state = _quantized(shape, quant_type, double=False, seed=1, device="cpu")  # the format, checked once
    packed, absmax, _ = R.quantize_4bit(w, state.code, quant_type == "fp4", False)
    assert torch.equal(packed.reshape(-1), q.reshape(-1)) and torch.equal(absmax, state.absmax)
    _, qd, sd = _quantized(shape, quant_type, double=True, seed=1, device="cpu")
    packed, codes8, extra = R.quantize_4bit(w, sd.code, quant_type == "fp4", True, sd.state2.code)
    assert torch.equal(packed.reshape(-1), qd.reshape(-1))
    assert torch.equal(extra["absmax2"], sd.state2.absmax) and float(extra["offset"]) == float(sd.offset)
    # the 8-bit scale codes: bitsandbytes' CPU search is not always the nearest code; a few land one code away
    diff = (codes8.long() - sd.absmax.long()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.98


def _counting(kernels):
    """`kernels` with calls counted per op: which path each forward took."""
    from qlcode.kernels.qlora_linear import Kernels

    calls = {"dequantize": 0, "matmul": 0}

    def count(name, op):
        def counted(*args, **kwargs):
            calls[name] += 1
            return op(*args, **kwargs)
        return counted

    return Kernels(count("dequantize", kernels.dequantize), count("matmul", kernels.matmul)), calls


@pytest.mark.parametrize("rows", [1, 16, 17, 40])
def test_decoding_rows_take_bitsandbytes_matmul_and_more_rows_dequantize(rows):
    import bitsandbytes as bnb

    from qlcode.kernels.qlora_linear import MAX_ROWS, TRITON, linear_4bit

    _, q, state = _quantized(SHAPES["7B-gate"])
    kernels, calls = _counting(TRITON)
    x = torch.randn(rows, SHAPES["7B-gate"][1], device=DEVICE)
    got = linear_4bit(x, q, state, kernels)
    assert calls == ({"dequantize": 0, "matmul": 1} if rows <= MAX_ROWS else {"dequantize": 1, "matmul": 0})
    if rows <= MAX_ROWS:
        assert torch.equal(got, bnb.matmul_4bit(x, q.t(), quant_state=state))
    torch.testing.assert_close(got, x @ R.dequantize_4bit(q, state).t())


@pytest.mark.parametrize("tokens", [6, 40])  # decoding's rows take bitsandbytes' matmul, more rows dequantize
def test_qlora_function_gradcheck_on_the_reference_and_kernels_against_it(tokens):
    from qlcode.kernels.qlora_linear import REFERENCE, TRITON, QLoRALinear

    _, q, state = _quantized((48, 64))
    x = torch.randn(2, tokens // 2, 64, dtype=torch.float64, device=DEVICE, requires_grad=True)
    a = torch.randn(4, 64, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(48, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: QLoRALinear.apply(x, x, q, state, a, b, 0.5, REFERENCE), (x, a, b))

    def grads(kernels):
        xs, as_, bs = (t.detach().float().requires_grad_() for t in (x, a, b))
        y = QLoRALinear.apply(xs, xs, q, state, as_, bs, 0.5, kernels)
        y.square().sum().backward()
        return y, xs.grad, as_.grad, bs.grad

    # bitsandbytes' matmul: its own summation order on a GPU; dequantize + matmul: the reference's, to the bit
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if tokens <= 16 else {"rtol": 0, "atol": 0}
    for got, want in zip(grads(TRITON), grads(REFERENCE)):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("tokens", [6, 40])
def test_a_bare_4bit_layer_keeps_only_its_4_bits_for_backward(tokens):
    """A 4-bit layer LoRA does not wrap (attention-only LoRA: the MLP) dequantizes again in backward."""
    from qlcode.kernels.qlora_linear import TRITON, FrozenLinear4bit

    _, q, state = _quantized((96, 128))
    x = torch.randn(tokens, 128, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = FrozenLinear4bit.apply(x, q, state, TRITON)
    assert saved == [], "neither the input nor the dequantized weight"
    y.square().sum().backward()
    w = R.dequantize_4bit(q, state)
    torch.testing.assert_close(y, x.detach() @ w.t())
    torch.testing.assert_close(x.grad, (2 * y.detach()) @ w)


def test_patched_4bit_model_decodes_like_bitsandbytes(tiny_base):
    """Generation through the kernels (bare 4-bit base and LoRA over it) against bitsandbytes: a prompt
    longer than MAX_ROWS, so the prefill goes through the Triton dequantization and each new token
    through bitsandbytes' matmul over the cache that prefill wrote."""
    from peft import LoraConfig, get_peft_model

    from qlcode.kernels.qlora_linear import MAX_ROWS, TRITON, patch_model
    from qlcode.models import load_base

    prompt = torch.tensor([[1, 300, 1201, 57, 900, 2048, 17, 4000, 33, 250, 1999, 8, 640, 71, 3001, 12, 555, 90, 1402, 6]])
    assert prompt.numel() > MAX_ROWS
    base = load_base(str(tiny_base))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()

    def run():
        with torch.no_grad():
            logits = model(input_ids=prompt).logits
            with model.disable_adapter():
                plain = model(input_ids=prompt).logits
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        return logits, plain, out.sequences, torch.stack(out.logits)  # the last: each new token's logits

    want = run()
    kernels, calls = _counting(TRITON)
    assert patch_model(model, kernels) == 2 * 7 * 2, "each of the 14 projections: its LoRA layer and its 4-bit base"
    got = run()
    assert calls["dequantize"] > 0 and calls["matmul"] > 0, calls
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[3], want[3], rtol=1e-4, atol=1e-4)


def test_training_step_under_bf16_autocast_matches_peft(tiny_base):
    """The GPU recipe's precision (bf16 autocast over fp32 LoRA weights): loss and LoRA gradients as PEFT's."""
    from peft import LoraConfig, get_peft_model

    from qlcode.kernels.qlora_linear import TRITON, patch_model
    from qlcode.models import load_base

    torch.manual_seed(0)
    base = load_base(str(tiny_base))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(3, 4000, (2, 24))

    def step(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    exact_loss, exact = step(autocast=False)
    peft_loss, peft = step(autocast=True)
    patch_model(model, TRITON)
    loss, got = step(autocast=True)
    assert abs(loss - exact_loss) <= 2 * abs(peft_loss - exact_loss) + 1e-3
    assert all(g.dtype == torch.float32 for g in got.values()), "gradients of the fp32 masters stay fp32"
    for name in exact:  # as close to the fp32 gradients as PEFT's own bf16 path is
        assert (got[name] - exact[name]).norm() <= 1.5 * (peft[name] - exact[name]).norm(), name


def test_training_through_the_kernels_matches_the_bitsandbytes_path(tmp_path, tiny_base, monkeypatch):
    from conftest import make_recipe, write_jsonl
    from qlcode.kernels import qlora_linear
    from qlcode.runs import read_jsonl
    from qlcode.train import build_trainer, train
    from test_train import ROWS

    kernels, calls = _counting(qlora_linear.TRITON)
    monkeypatch.setattr(qlora_linear, "TRITON", kernels)  # what quant.kernels: triton patches in

    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    losses = {}
    for kernels in ("bitsandbytes", "triton"):
        recipe = make_recipe(tmp_path / kernels, tiny_base, rows, quant={"bits": 4, "kernels": kernels},
                             lora={"dropout": 0.0}, train={"max_steps": 4}, data={"validation": 0})
        if kernels == "triton":
            trainer, _ = build_trainer(recipe)
            patched = [m for m in trainer.model.modules() if "_qlcode_original_forward" in m.__dict__]
            assert len(patched) == 2 * 7 * 2 + 2 * 2  # each layer, and each block fused (quant.fused_blocks)
        train(recipe)
        losses[kernels] = [r["loss"] for r in read_jsonl(tmp_path / kernels / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses["triton"]) == 4
    assert calls["dequantize"] > 0, "training's rows went through the Triton dequantization"
    assert losses["triton"] == pytest.approx(losses["bitsandbytes"], rel=1e-4)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "bitsandbytes" / "run" / "adapter_model.safetensors")
    b = load_file(tmp_path / "triton" / "run" / "adapter_model.safetensors")
    assert a.keys() == b.keys(), "the adapter files are the same whichever kernels trained them"
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


def test_triton_kernels_without_4bit_weights_is_a_recipe_error(tmp_path):
    import yaml

    from qlcode.errors import RecipeError
    from qlcode.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "builtin:micro-codellama"}, "quant": {"bits": 8, "kernels": "triton"},
                                    "data": {"datasets": [{"source": "builtin:stdlib-python-instruct", "format": "alpaca"}]}}))
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: quant.kernels: qlcode's Triton kernels run 4-bit weights; "
                                          r"with quant.bits 8 use quant.kernels: auto or bitsandbytes"):
        load_recipe(path)
