"""A QLoRA linear layer as one autograd function: y = x W^T + s (dropout(x) A^T) B^T, W in 4 bits.

The backward pass dequantizes W again for the input gradient instead of keeping the dequantized
weight from the forward pass alive (that would cost 2 bytes per parameter of activation memory per
layer), and computes the LoRA gradients from the saved inputs. The 4-bit ops are a parameter
(`Kernels`): in training and decoding (`TRITON`, quant.kernels: triton), qlcode's Triton
dequantization followed by a matmul for more than MAX_ROWS rows (prefill, training) and
bitsandbytes' own 4-bit matmul for decoding's few rows; in the float64 gradcheck (`REFERENCE`),
the torch reference for both. qlcode's fused dequant-matmul for decoding was measured on an H100
at 0.24-0.36x of bitsandbytes' decoding speed and removed (BENCHMARKS.md).

The LoRA product stays two small matmuls beside the 4-bit one: fusing it into the same kernel
is kept out until a GPU measurement shows it pays (the issue's rule).

`patch_model` swaps these forwards in for every PEFT LoRA-over-Linear4bit layer and every bare
bitsandbytes Linear4bit, in place: parameters, adapter files, saving, loading and merging are
untouched, and a LoRA layer whose adapter is disabled, merged, DoRA or mixed per batch row falls
back to PEFT's own forward (over the patched base layer).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qlcode.kernels import dequant_4bit, nf4_reference

# Decoding's rows (batch x new tokens) take `Kernels.matmul`, more rows dequantize and use a matmul.
# On an H100 (benchmarks/results/2026-11-26-h100/matmul_4bit.md) bitsandbytes' matmul_4bit beat
# qlcode's dequantize + matmul at 1 and 4 rows on every weight measured; at 16 rows it lost on two
# of three, so the line between them is a candidate for the next GPU session.
MAX_ROWS = 16


@dataclass(frozen=True)
class Kernels:
    dequantize: Callable[..., torch.Tensor]  # (packed, state, dtype) -> W[N, K]
    matmul: Callable[..., torch.Tensor]  # (x, packed, state) -> x @ W^T in x's dtype, for at most MAX_ROWS rows


def bitsandbytes_matmul(x: torch.Tensor, packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' own x @ W^T (0.50: its fused gemm_4bit kernel or dequantize + matmul, picked per
    GPU and shape). It reads the packed bytes as they are: nothing is repacked (the CPU repacking
    hazard lives in Linear4bit.forward, which a patched layer no longer runs)."""
    import bitsandbytes as bnb

    return bnb.matmul_4bit(x, packed.t(), quant_state=state)


REFERENCE = Kernels(nf4_reference.dequantize_4bit, nf4_reference.matmul_4bit)
TRITON = Kernels(dequant_4bit.dequantize_4bit, bitsandbytes_matmul)


def linear_4bit(x: torch.Tensor, packed: torch.Tensor, state, kernels: Kernels) -> torch.Tensor:
    """x @ W^T: `kernels.matmul` for decoding's few rows, dequantize then matmul for prefill and training."""
    if x.numel() // x.shape[-1] <= MAX_ROWS:
        return kernels.matmul(x, packed, state)
    return x @ kernels.dequantize(packed, state, x.dtype).t()


class FrozenLinear4bit(torch.autograd.Function):
    """x @ W^T for a 4-bit layer LoRA does not wrap (attention-only LoRA leaves the MLP bare): like
    QLoRALinear, only the 4 bits are kept for backward, where W is dequantized again."""

    @staticmethod
    def forward(ctx, x, packed, state, kernels: Kernels):
        ctx.packed, ctx.state, ctx.kernels = packed, state, kernels
        return linear_4bit(x, packed, state, kernels)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.kernels.dequantize(ctx.packed, ctx.state, grad.dtype), None, None, None


class QLoRALinear(torch.autograd.Function):
    """Everything in x's dtype (the compute dtype); the LoRA weights are cast to it and their
    gradients returned in their own dtype (fp32 masters under bf16 autocast)."""

    @staticmethod
    def forward(ctx, x, x_lora, packed, state, lora_a, lora_b, scale: float, kernels: Kernels):
        ctx.save_for_backward(x_lora, lora_a, lora_b)
        ctx.packed, ctx.state, ctx.scale, ctx.kernels = packed, state, scale, kernels
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        return linear_4bit(x, packed, state, kernels) + scale * ((x_lora @ a.t()) @ b.t())

    @staticmethod
    def backward(ctx, grad):
        x_lora, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scale
        a, b = lora_a.to(grad.dtype), lora_b.to(grad.dtype)
        w = ctx.kernels.dequantize(ctx.packed, ctx.state, grad.dtype)  # recomputed, never stored
        g2 = grad.reshape(-1, grad.shape[-1])
        xl2 = x_lora.reshape(-1, x_lora.shape[-1])
        gb = g2 @ b  # (tokens, r)
        grad_x = grad @ w
        grad_x_lora = (s * gb @ a).reshape(x_lora.shape)
        grad_a = (s * gb.t() @ xl2).to(lora_a.dtype)
        grad_b = (s * g2.t() @ (xl2 @ a.t())).to(lora_b.dtype)
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None, None


def compute_dtype(x: torch.Tensor, fallback: torch.dtype) -> torch.dtype:
    """autocast's dtype when it is on (bf16 training on a GPU), else `fallback`."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else fallback


def _with_bias(y: torch.Tensor, layer) -> torch.Tensor:
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


def _lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replacement forward of peft.tuners.lora.bnb.Linear4bit (one active LoRA adapter)."""
    active = self.active_adapters
    if (self.disable_adapters or self.merged or len(active) != 1 or self.use_dora.get(active[0])
            or kwargs.get("adapter_names") is not None):  # PEFT's mixed-adapter batches stay PEFT's
        return self._qlcode_original_forward(x, *args, **kwargs)
    name = active[0]
    weight = self.base_layer.weight
    x_cast = x.to(compute_dtype(x, self.lora_A[name].weight.dtype))
    with torch.autocast(x.device.type, enabled=False):  # the function casts for itself
        y = QLoRALinear.apply(x_cast, self.lora_dropout[name](x_cast), weight.data, weight.quant_state,
                              self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name],
                              self._qlcode_kernels)
    return _with_bias(y, self.base_layer).to(x.dtype)


def _linear4bit_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Replacement forward of bitsandbytes.nn.Linear4bit: same compute dtype, qlcode's kernels."""
    dtype = compute_dtype(x, self.compute_dtype or x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        y = FrozenLinear4bit.apply(x.to(dtype), self.weight.data, self.weight.quant_state, self._qlcode_kernels)
    return _with_bias(y, self).to(x.dtype)


def patch_model(model: torch.nn.Module, kernels: Kernels) -> int:
    """Route every 4-bit linear layer (LoRA-wrapped or bare) through `kernels`; returns how many."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    count = 0
    for module in model.modules():
        forward = (_lora_forward if isinstance(module, LoraLinear4bit)
                   else _linear4bit_forward if isinstance(module, bnb.nn.Linear4bit) else None)
        if forward is not None and "_qlcode_original_forward" not in module.__dict__:
            module._qlcode_original_forward = module.forward
            module._qlcode_kernels = kernels
            module.forward = types.MethodType(forward, module)
            count += 1
    return count
