"""The fused 4-bit matmul at decoding's row counts, per tile configuration, against bitsandbytes.

    python benchmarks/matmul_4bit.py                          # on a GPU: CodeLlama-7B's projections
    python benchmarks/matmul_4bit.py --scale 16 --iters 1     # without one: a run of the script

decode.py times whole generations; this times the op it patches, y = x @ W^T for x of 1, 4 and 16
bf16 rows and W in NF4 + double quant. Baselines: bitsandbytes.matmul_4bit (its GEMV for one row,
dequantize + matmul otherwise) and qlcode's dequantize + matmul. Then qlcode.kernels.matmul_4bit
under each --configs entry (BLOCK_N, BLOCK_K, warps, stages). Microseconds per call; a fused
result that differs from dequantize + matmul by more than bf16 rounding is marked "!".
"""

from __future__ import annotations

import argparse

import harness
import torch

DEFAULT_CONFIGS = ["64,128,4,2", "64,128,8,2", "32,128,4,2", "32,64,4,2", "16,128,4,2", "64,64,4,1", "32,128,4,1", "16,256,4,2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (CPU runs)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="BLOCK_N,BLOCK_K,warps,stages")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()

    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from qlcode.kernels import matmul_4bit as fused
    from qlcode.kernels.dequant_4bit import dequantize_4bit

    configs = [tuple(int(v) for v in c.split(",")) for c in args.configs]
    dtype = torch.bfloat16 if harness.GPU else torch.float32
    shapes = {f"7B {p}": harness.projections("7B", args.scale)[p] for p in ("q", "gate", "down")}
    print(harness.header(f"fused 4-bit matmul: NF4 + double quant, {dtype}, microseconds per call, {args.iters} calls each"))
    rows = []
    for name, (n, k) in shapes.items():
        torch.manual_seed(0)
        packed, state = F.quantize_4bit((torch.randn(n, k, device=harness.DEVICE) * 0.02).to(dtype),
                                        blocksize=64, compress_statistics=True, quant_type="nf4")
        for m in args.rows:
            x = torch.randn(m, k, device=harness.DEVICE, dtype=dtype)
            reference = x @ dequantize_4bit(packed, state, dtype).t()
            us = [1e6 * harness.seconds_per_call(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), args.iters),
                  1e6 * harness.seconds_per_call(lambda: x @ dequantize_4bit(packed, state, dtype).t(), args.iters)]
            cells = [f"{t:,.1f}" for t in us]
            for block_n, block_k, warps, stages in configs:
                fused.BLOCK_N, fused.BLOCK_K, fused.WARPS, fused.STAGES = block_n, block_k, warps, stages
                got = fused.matmul_4bit(x, packed, state)
                close = torch.allclose(got.float(), reference.float(), rtol=2e-2, atol=2e-2 * reference.abs().max().item())
                t = 1e6 * harness.seconds_per_call(lambda: fused.matmul_4bit(x, packed, state), args.iters)
                cells.append(f"{t:,.1f}" + ("" if close else " !"))
            rows.append([name, f"{n}x{k}", m, *cells])
    harness.print_table(["weight", "shape", "rows", "bitsandbytes", "dequant + matmul",
                         *(f"fused {c}" for c in args.configs)], rows)


if __name__ == "__main__":
    main()
