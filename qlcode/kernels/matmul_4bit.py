"""Triton: y = x @ W^T with W in bitsandbytes' 4-bit format, for the few rows of decoding.

Generating one token multiplies a handful of rows (M <= 16) by every weight: the cost is reading
the weight. bitsandbytes either dequantizes the whole weight to fp16 first (written, then read
again: 4.5 bytes moved per 0.5-byte parameter) or, for M = 1 only, runs its GEMV. This kernel
reads the packed bytes and the scales once, dequantizes a tile in registers exactly as
dequant_4bit does (fp32 arithmetic, cast to the compute dtype) and multiplies it at once: the
fp16 weight never exists in memory. Each program owns BLOCK_N output columns and one of SPLIT_K
slices of the reduction (more programs for narrow weights). With one slice the result is stored
in x's dtype (one launch per layer: decoding pays per launch); with more, partial sums are added
atomically into an fp32 buffer, then cast. Reference: qlcode.kernels.nf4_reference.matmul_4bit.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from bitsandbytes.functional import QuantState

from qlcode.kernels.dequant_4bit import EXACT, dequantized_values, state_arguments

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_ROWS = 16  # the rows of one program: decoding, not prefill (prefill dequantizes and uses cuBLAS)
# A GPU program's tile and launch (benchmarks/matmul_4bit.py measures others). Software pipelining keeps
# every gathered table load of a tile in shared memory: Triton's default of 3 stages asks an H100 for
# 240 KiB with fp32 inputs (it has 227); 2 stages fit every dtype.
BLOCK_N, BLOCK_K, WARPS, STAGES = 64, 128, 4, 2


@triton.jit
def _matmul_4bit_kernel(x_ptr, packed_ptr, code_ptr, absmax_ptr, code8_ptr, absmax2_ptr, offset_ptr, out_ptr,
                        M, N, K, stride_xm, K_PER_SPLIT,
                        NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
                        SPLIT: tl.constexpr):
    rm = tl.arange(0, BLOCK_M)
    rn = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    k_start = tl.program_id(1) * K_PER_SPLIT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        wmask = (rn[:, None] < N) & (rk[None, :] < K)
        e = rn[:, None] * K + rk[None, :]  # flat element index of W[n, k]
        w = dequantized_values(packed_ptr, code_ptr, absmax_ptr, code8_ptr, absmax2_ptr, offset_ptr, e, wmask,
                               NESTED, BLOCKSIZE, BLOCKSIZE2)
        w = w.to(x_ptr.dtype.element_ty)  # rounded as dequant_4bit rounds it
        if DOT_FP32:  # the interpreter cannot multiply bf16: the same products, taken in fp32
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    out = out_ptr + rm[:, None] * N + rn[None, :]
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    if SPLIT:
        tl.atomic_add(out, acc, mask=omask)
    else:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=omask)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tiles(n: int, k: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K): enough programs to fill the GPU, one big tile in the interpreter."""
    if INTERPRET:
        return 64, 256, 1
    programs = triton.cdiv(n, BLOCK_N)
    sms = _multiprocessors(device)
    split_k = 1
    while programs * split_k < 2 * sms and k // (split_k * 2) >= 4 * BLOCK_K:
        split_k *= 2
    return BLOCK_N, BLOCK_K, split_k


def matmul_4bit(x: torch.Tensor, packed: torch.Tensor, state: QuantState, split_k: int | None = None) -> torch.Tensor:
    """x[..., K] @ W^T for W[N, K] as bitsandbytes packed it; at most MAX_ROWS rows of x, in x.dtype."""
    n, k = state.shape
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"matmul_4bit takes at most {MAX_ROWS} rows (got {m}); dequantize and use a matmul")
    block_n, block_k, auto_split = _tiles(n, k, x.device)
    split = split_k or auto_split
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    out = torch.zeros(m, n, dtype=torch.float32, device=x.device) if splits > 1 else torch.empty(m, n, dtype=x.dtype, device=x.device)
    pointers, constants = state_arguments(packed, state)
    _matmul_4bit_kernel[(triton.cdiv(n, block_n), splits)](
        x2, *pointers, out, m, n, k, x2.stride(0), k_per_split, **constants,
        BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, DOT_FP32=INTERPRET or x.dtype == torch.float32,
        SPLIT=splits > 1, num_warps=WARPS, num_stages=STAGES, **EXACT,
    )
    return out.to(x.dtype).reshape(*x.shape[:-1], n)
