"""Dequantization bandwidth: qlcode's Triton kernel against bitsandbytes and a device-to-device copy.

    python benchmarks/dequant.py                  # on a GPU: every projection of CodeLlama-7B/13B/34B
    python benchmarks/dequant.py --scale 32       # without one: a run of the script on small shapes

For each weight shape, NF4 with double quantization (what recipes use) to --dtype: GB/s of
qlcode.kernels.dequant_4bit (into one reused buffer), of bitsandbytes.functional.dequantize_4bit
(into the same buffer), and of a copy of an output-sized tensor (the memory system's limit). A
kernel's bytes are what it must move: the packed weight and scales read, the output written.
The last column checks the two dequantizations agree bit for bit.
"""

from __future__ import annotations

import argparse

import harness
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=list(harness.CODELLAMA), choices=list(harness.CODELLAMA))
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (CPU runs)")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()

    import bitsandbytes.functional as F

    from qlcode.kernels.dequant_4bit import dequantize_4bit

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    shapes = {f"{arch} {proj}": shape for arch in args.arch for proj, shape in harness.projections(arch, args.scale).items()}
    buffer = torch.empty(max(n * k for n, k in shapes.values()), dtype=dtype, device=harness.DEVICE)
    print(harness.header(f"dequant: NF4 + double quant -> {args.dtype}, {args.iters} calls each"))
    rows = []
    for name, (n, k) in shapes.items():
        torch.manual_seed(0)
        w = (torch.randn(n, k, device=harness.DEVICE) * 0.02).to(dtype)
        packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        out = buffer[: n * k].view(n, k)
        # read: the 4-bit bytes, the 8-bit block scales, the fp32 scales of those, the 256-entry code table;
        # written: the weight
        moved = (packed.numel() + state.absmax.numel() + 4 * state.state2.absmax.numel() + 4 * state.state2.code.numel()
                 + out.numel() * out.element_size())
        ours = harness.seconds_per_call(lambda: dequantize_4bit(packed, state, dtype, out=buffer), args.iters)
        same = torch.equal(out, F.dequantize_4bit(packed, state).to(dtype))
        target = out if harness.GPU else None  # bitsandbytes has no CPU kernel with out=
        theirs = harness.seconds_per_call(lambda: F.dequantize_4bit(packed, state, out=target), args.iters)
        src = torch.empty_like(out)
        copy = harness.seconds_per_call(lambda: out.copy_(src), args.iters)
        gbs = [moved / ours / 1e9, moved / theirs / 1e9, 2 * out.numel() * out.element_size() / copy / 1e9]
        rows.append([name, f"{n}x{k}", *(f"{g:,.1f}" for g in gbs), f"{100 * gbs[0] / gbs[2]:.0f}%",
                     f"{gbs[0] / gbs[1]:.2f}x", "yes" if same else "NO"])
    harness.print_table(["weight", "shape", "qlcode GB/s", "bitsandbytes GB/s", "copy GB/s", "qlcode / copy",
                         "qlcode / bitsandbytes", "bit-exact"], rows)


if __name__ == "__main__":
    main()
