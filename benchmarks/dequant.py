"""Dequantization bandwidth: qlcode's Triton kernel against bitsandbytes and a device-to-device copy.

    python benchmarks/dequant.py                  # on a GPU: every projection of CodeLlama-7B/13B/34B
    python benchmarks/dequant.py --scale 32       # without one: a run of the script on small shapes

For each weight shape, NF4 with double quantization (what recipes use) to --dtype: GB/s of
qlcode.kernels.dequant_4bit (into one reused buffer), of bitsandbytes.functional.dequantize_4bit
(into the same buffer), and of a copy of an output-sized tensor (the memory system's limit). A
kernel's bytes are what it must move: the packed weight and scales read, the output written.
Each shape is measured --repeats times, the three in alternating order (forward, then backward
through the list), so that none always runs first on a warm or cold memory system: the table gives
the median and the min-max of each, and of qlcode / copy taken repeat by repeat (the issue's target
is at least 90% on every projection). The last column checks the two dequantizations agree bit for bit.
"""

from __future__ import annotations

import argparse
import statistics

import harness
import torch


def median_spread(values: list[float], fmt: str = "{:,.1f}") -> list[str]:
    return [fmt.format(statistics.median(values)), f"{fmt.format(min(values))}-{fmt.format(max(values))}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=list(harness.CODELLAMA), choices=list(harness.CODELLAMA))
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension (CPU runs)")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    ap.add_argument("--repeats", type=int, default=5, help="measurements of each shape, in alternating order")
    args = ap.parse_args()

    import bitsandbytes.functional as F

    from qlcode.kernels.dequant_4bit import dequantize_4bit

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    shapes = {f"{arch} {proj}": shape for arch in args.arch for proj, shape in harness.projections(arch, args.scale).items()}
    buffer = torch.empty(max(n * k for n, k in shapes.values()), dtype=dtype, device=harness.DEVICE)
    print(harness.header(f"dequant: NF4 + double quant -> {args.dtype}; {args.repeats} repeats of {args.iters} calls each, "
                         "in alternating order"))
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
        dequantize_4bit(packed, state, dtype, out=buffer)
        same = torch.equal(out, F.dequantize_4bit(packed, state).to(dtype))
        target = out if harness.GPU else None  # bitsandbytes has no CPU kernel with out=
        src = torch.empty_like(out)
        calls = {  # name -> (the call, the bytes it moves)
            "qlcode": (lambda: dequantize_4bit(packed, state, dtype, out=buffer), moved),
            "bitsandbytes": (lambda: F.dequantize_4bit(packed, state, out=target), moved),
            "copy": (lambda: out.copy_(src), 2 * out.numel() * out.element_size()),
        }
        gbs: dict[str, list[float]] = {c: [] for c in calls}
        for rep in range(args.repeats):
            for c in calls if rep % 2 == 0 else list(calls)[::-1]:
                fn, nbytes = calls[c]
                gbs[c].append(nbytes / harness.seconds_per_call(fn, args.iters) / 1e9)
        of_copy = [100 * q / c for q, c in zip(gbs["qlcode"], gbs["copy"])]
        rows.append([name, f"{n}x{k}", *(cell for c in calls for cell in median_spread(gbs[c])),
                     *median_spread(of_copy, "{:.0f}%"),
                     f"{statistics.median(gbs['qlcode']) / statistics.median(gbs['bitsandbytes']):.2f}x", "yes" if same else "NO"])
    harness.print_table(["weight", "shape", "qlcode GB/s", "qlcode min-max", "bitsandbytes GB/s", "bitsandbytes min-max",
                         "copy GB/s", "copy min-max", "qlcode / copy", "qlcode / copy min-max", "qlcode / bitsandbytes",
                         "bit-exact"], rows)


if __name__ == "__main__":
    main()
