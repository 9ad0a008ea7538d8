"""train.liger: liger-kernel's Triton kernels for the standard ops of a Llama decoder, the library
rather than kernels of qlcode's own: RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy (the
loss from the last hidden states in chunks, the logits never materialised).

With the fused QLoRA blocks the MLP is qlcode's (its SwiGLU is fused with the 4-bit projections
and LoRA), so liger's SwiGLU is left out there. Liger's kernels need a CUDA GPU (under Triton's
CPU interpreter its RMSNorm fails to run, liger-kernel 0.8.5), so a recipe that asks for it on a
machine without one stops with a message; other families keep the plain path, with one line.
RoPE is patched in transformers' Llama module itself, as liger does it: for every Llama model of
the process.
"""

from __future__ import annotations

import torch

from qlcode.errors import ModelError


def apply_liger(model: torch.nn.Module, fused_mlp: bool) -> list[str]:
    """Patch liger's kernels into a (PEFT-wrapped) Llama model; returns the ops patched."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ops = {"rope": True, "rms_norm": True, "swiglu": not fused_mlp, "fused_linear_cross_entropy": True}
    apply_liger_kernel_to_llama(**ops, model=base)
    return [op for op, on in ops.items() if on]


def use_liger(model: torch.nn.Module) -> list[str]:
    """train.liger: liger's kernels where they can run, else a ModelError saying what to do."""
    from qlcode.progress import console

    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise ModelError("train.liger: liger-kernel is not installed: pip install 'qlcode[liger]', or set train.liger: false") from None
    if not torch.cuda.is_available():
        raise ModelError("train.liger: liger-kernel's Triton kernels need a CUDA GPU; set train.liger: false on this machine")
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind != "llama":
        console.print(f"train.liger: {kind} keeps the plain path (qlcode applies liger-kernel to Llama models)", soft_wrap=True)
        return []
    fused = any("_qlcode_original_forward" in m.__dict__ and type(m).__name__ == "LlamaMLP" for m in model.modules())
    return apply_liger(model, fused)
