"""A QLoRA linear layer as one autograd function: y = x W^T + s (dropout(x) A^T) B^T, W in 4 bits.

The backward pass dequantizes W again for the input gradient instead of keeping the dequantized
weight from the forward pass alive (that would cost 2 bytes per parameter of activation memory per
layer), and computes the LoRA gradients from the saved inputs. The dequantizer is a parameter:
the Triton kernel in training, the torch reference in the float64 gradcheck.

`patch_model` swaps this in for the forward of every PEFT LoRA-over-Linear4bit layer, in place:
parameters, adapter files, saving, loading and merging are untouched, and a layer whose adapter
is disabled, merged or DoRA falls back to PEFT's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

Dequantize = Callable[..., torch.Tensor]


class QLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_lora, packed, state, lora_a, lora_b, scale: float, dequantize: Dequantize):
        w = dequantize(packed, state, x.dtype)
        ctx.save_for_backward(x_lora, lora_a, lora_b)
        ctx.packed, ctx.state, ctx.scale, ctx.dequantize = packed, state, scale, dequantize
        return x @ w.t() + scale * ((x_lora @ lora_a.t()) @ lora_b.t())

    @staticmethod
    def backward(ctx, grad):
        x_lora, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scale
        w = ctx.dequantize(ctx.packed, ctx.state, grad.dtype)  # recomputed, never stored
        g2 = grad.reshape(-1, grad.shape[-1])
        xl2 = x_lora.reshape(-1, x_lora.shape[-1])
        gb = g2 @ lora_b  # (tokens, r)
        grad_x = grad @ w
        grad_x_lora = (s * gb @ lora_a).reshape(x_lora.shape)
        grad_a = s * gb.t() @ xl2
        grad_b = s * g2.t() @ (xl2 @ lora_a.t())
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None, None


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replacement forward of peft.tuners.lora.bnb.Linear4bit (one active LoRA adapter)."""
    active = self.active_adapters
    if self.disable_adapters or self.merged or len(active) != 1 or self.use_dora.get(active[0]):
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    weight = self.base_layer.weight
    dtype = self.lora_A[name].weight.dtype
    x_cast = x.to(dtype)
    y = QLoRALinear.apply(x_cast, self.lora_dropout[name](x_cast), weight.data, weight.quant_state,
                          self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], self._dequantize)
    return y.to(x.dtype)


def patch_model(model: torch.nn.Module, dequantize: Dequantize) -> int:
    """Route every LoRA-over-4-bit layer through QLoRALinear; returns how many were patched."""
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear4bit) and "_peft_forward" not in module.__dict__:
            module._peft_forward = module.forward
            module._dequantize = dequantize
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
