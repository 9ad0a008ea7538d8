"""LoftQ (lora.init: loftq): A and B fitted to a 4-bit base's quantization error, on the device the weights are on.

For each LoRA-wrapped 4-bit layer: the full-precision weight W read from the base's safetensors (PEFT's own
_SafetensorLoader: one file, shards, or the Hub cache), the 4-bit weight dequantized by bitsandbytes, and the
residual W - deq(W) split by PEFT's own _low_rank_decomposition into L (out x r) and R (r x in); B A then holds
the residual's best rank-r part, so base + adapter starts closer to the full-precision model than the 4-bit base.

qlcode does not call PEFT's replace_lora_weights_loftq directly, for two reasons:
- its _loftq_init_new moves W to a hard-coded "cuda" (or "xpu") device, so it fails on a machine without one,
  although every piece it composes (dequantize_4bit, torch.linalg.svd) works on CPU;
- it sets B = L and A = R whatever the adapter's scaling s = alpha / r (peft issue #1982), so the adapter adds
  s x the fitted part: at qlcode's default alpha = 2r the weight error |res - 2 L R| equals |res| exactly (the
  residual is orthogonal to its own truncation's remainder) and the fit is undone. qlcode divides both by
  sqrt(s): s B A = L R, and at s = 1 A = R and B = L, as PEFT sets them.
"""

from __future__ import annotations

import math

import bitsandbytes.functional as F
import torch
from peft import PeftModel
from peft.tuners.lora import Linear4bit
from peft.utils.loftq_utils import _low_rank_decomposition, _SafetensorLoader

PREFIX = "base_model.model."


def dequantized(weight: torch.nn.Parameter) -> torch.Tensor:
    """A bitsandbytes 4-bit weight as its layer computes with it (in the dtype it was quantized from).

    Only valid for the layout bitsandbytes quantized it in: qlcode.models.disable_cpu_repacking keeps the
    avx512_bf16 CPU repacking (which rewrites weight.data in place for an inference GEMV) from ever running."""
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        raise RuntimeError("this 4-bit weight was repacked for bitsandbytes' CPU inference kernel; load the base with "
                           "qlcode.models.load_base, which turns that repacking off")
    return F.dequantize_4bit(weight.data, weight.quant_state)


@torch.no_grad()
def loftq_init(model: PeftModel, model_path: str | None, adapter: str = "default") -> int:
    """Set every 4-bit LoRA layer's A and B from its quantization residual; returns the number of layers.

    `model_path`: the base's model.safetensors (its index for shards is found beside it), or None for a Hub base
    in the local cache. One layer at a time: the transient memory is one weight's fp32 copies and its SVD."""
    loader = _SafetensorLoader(model, model_path)
    layers = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        weight = module.get_base_layer().weight
        residual = loader.get_tensor(name.removeprefix(PREFIX) + ".weight").to(weight.device, torch.float32)
        residual.sub_(dequantized(weight))  # in place: one m x n fp32 tensor beside the SVD (qlcode.plan.startup)
        parts = _low_rank_decomposition(residual, reduced_rank=module.r[adapter])
        root = math.sqrt(module.scaling[adapter])
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        a.data = (parts["R"] / root).to(a.dtype)
        b.data = (parts["L"] / root).to(b.dtype)
        layers += 1
    return layers
