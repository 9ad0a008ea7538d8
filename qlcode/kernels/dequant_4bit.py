"""Triton: dequantize bitsandbytes 4-bit weights (NF4 or FP4, double quantization included) in
one launch, into a caller-provided buffer, in fp16, bf16 or fp32.

bitsandbytes dequantizes a double-quantized weight in two launches (the 8-bit scales to an fp32
temporary, then the 4-bit values). Here each program reads its bytes, looks up the 4-bit code,
rebuilds the block's scale from the 8-bit code, the 256-block scale and the offset, and writes
the result: one pass over the packed bytes. Arithmetic is fp32 and the store casts, as in
bitsandbytes. Reference: qlcode.kernels.nf4_reference.dequantize_4bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from bitsandbytes.functional import QuantState

# The interpreter (TRITON_INTERPRET=1, CPU) pays per program: give each program much more work.
BLOCK = 65536 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
# bitsandbytes rounds the nested scale's product before adding the offset; on a GPU Triton would fuse
# the two into one FMA (one rounding) and differ in the last bit. Every launch here passes this.
EXACT = {"enable_fp_fusion": False}


@triton.jit
def dequantized_values(packed_ptr, code_ptr, absmax_ptr, code8_ptr, absmax2_ptr, offset_ptr, e, mask,
                       NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr):
    """fp32 values of the weight's elements at flat indices `e`: code[nibble] * the block's scale."""
    byte = tl.load(packed_ptr + e // 2, mask=mask, other=0).to(tl.int32)
    nibble = tl.where(e % 2 == 0, byte >> 4, byte & 15)  # the high nibble holds the even element
    value = tl.load(code_ptr + nibble, mask=mask, other=0.0).to(tl.float32)
    block = e // BLOCKSIZE
    if NESTED:
        q = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(code8_ptr + q, mask=mask, other=0.0) * tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=mask, other=0.0)
        scale = scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    return value * scale


@triton.jit
def _dequantize_kernel(packed_ptr, code_ptr, absmax_ptr, code8_ptr, absmax2_ptr, offset_ptr, out_ptr, n,
                       NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = dequantized_values(packed_ptr, code_ptr, absmax_ptr, code8_ptr, absmax2_ptr, offset_ptr, offs, mask,
                           NESTED, BLOCKSIZE, BLOCKSIZE2)
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=mask)


def state_arguments(packed: torch.Tensor, state: QuantState) -> tuple[tuple, dict]:
    """`dequantized_values`' pointer arguments and constants for one weight."""
    nested = bool(state.nested)
    s2 = state.state2 if nested else None
    pointers = (packed.view(torch.uint8), state.code, state.absmax,
                s2.code if nested else state.code, s2.absmax if nested else state.absmax,
                state.offset if nested else state.code)  # the offset by pointer: float() would wait for the GPU
    return pointers, {"NESTED": nested, "BLOCKSIZE": state.blocksize, "BLOCKSIZE2": s2.blocksize if nested else 1}


def dequantize_4bit(packed: torch.Tensor, state: QuantState, dtype: torch.dtype | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as `state.shape` in `dtype`; `out`, if given, is a flat buffer at least that large
    (one buffer can serve every layer: the result is a view of its start)."""
    n = state.shape.numel()
    dtype = dtype or state.dtype
    if out is None:
        out = torch.empty(n, dtype=dtype, device=packed.device)
    elif out.dtype != dtype or out.numel() < n or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} buffer of at least {n} elements")
    pointers, constants = state_arguments(packed, state)
    _dequantize_kernel[(triton.cdiv(n, BLOCK),)](*pointers, out, n, **constants, BLOCK=BLOCK, **EXACT)
    return out[:n].view(state.shape)
