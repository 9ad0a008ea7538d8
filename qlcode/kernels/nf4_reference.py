"""bitsandbytes' 4-bit format in plain torch: the reference every kernel is tested against.

Layout (bitsandbytes 0.50 `QuantState`): the weight is flattened and cut into blocks of 64; each
block is scaled by its absmax and each value replaced by the index of the nearest of 16 codes
(NF4: normal-float quantiles; FP4: a sign bit and 3 magnitude bits). Two indices share a byte, the
high nibble holding the even element. With double quantization the fp32 absmax values are
themselves stored in 8 bits: minus their mean (`offset`), cut into blocks of 256, scaled by each
block's absmax (`state2.absmax`) and mapped to the nearest of 256 dynamic codes (`state2.code`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bitsandbytes.functional import QuantState

BLOCK = 64
BLOCK2 = 256


def absmax_of(state: QuantState) -> torch.Tensor:
    """The fp32 per-block scales, undoing double quantization when present."""
    if state.nested:
        s2 = state.state2
        scales = s2.code[state.absmax.long()] * s2.absmax.repeat_interleave(s2.blocksize)[: state.absmax.numel()]
        return scales + state.offset
    return state.absmax.float()


def dequantize_4bit(packed: torch.Tensor, state: QuantState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Same values as bitsandbytes.functional.dequantize_4bit: code[index] * absmax in fp32, then cast."""
    bytes_ = packed.contiguous().view(torch.uint8).reshape(-1)  # any quant_storage dtype holds the same bytes
    idx = torch.stack([bytes_ >> 4, bytes_ & 0xF], dim=1).reshape(-1).long()
    n = state.shape.numel()
    scales = absmax_of(state).repeat_interleave(state.blocksize)[:n]
    values = state.code.float()[idx[:n]] * scales
    return values.to(dtype or state.dtype).reshape(state.shape)


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return (x[:, None] - code[None, :]).abs().argmin(dim=1)


def _blockwise(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x cut into zero-padded blocks, each block's absmax)."""
    pad = (-x.numel()) % block
    blocks = F.pad(x, (0, pad)).reshape(-1, block)
    return blocks, blocks.abs().amax(dim=1)


def quantize_4bit(w: torch.Tensor, code: torch.Tensor, fp4: bool, double_quant: bool,
                  code8: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(packed bytes, absmax as stored, double-quant state): the bytes of bitsandbytes.quantize_4bit."""
    x = w.reshape(-1).float()
    blocks, absmax = _blockwise(x, BLOCK)
    normed = (blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).reshape(-1)[: x.numel()]
    if fp4:  # sign bit 8, magnitude from the positive half of the table
        magnitude = _nearest(normed.abs(), code[:8].float())
        # both zero codes decode to 0.0; bitsandbytes 0.50 writes the zero with the opposite sign bit
        idx = magnitude + 8 * torch.where(magnitude == 0, normed >= 0, normed < 0)
    else:
        idx = _nearest(normed, code.float())
    idx = F.pad(idx, (0, idx.numel() % 2)).to(torch.uint8)
    packed = (idx[0::2] << 4 | idx[1::2]).reshape(-1, 1)
    if not double_quant:
        return packed, absmax, {}
    offset = absmax.mean()
    blocks2, absmax2 = _blockwise(absmax - offset, BLOCK2)
    normed2 = (blocks2 / absmax2[:, None]).reshape(-1)[: absmax.numel()]
    # nearest 8-bit code: bitsandbytes' CPU search lands one code away on a few values (see tests)
    return packed, _nearest(normed2, code8.float()).to(torch.uint8), {"offset": offset, "absmax2": absmax2}


def matmul_4bit(x: torch.Tensor, packed: torch.Tensor, state: QuantState) -> torch.Tensor:
    """x @ W^T with W dequantized to x's dtype first: the reference's `Kernels.matmul` (qlora_linear)."""
    return x @ dequantize_4bit(packed, state, x.dtype).t()
