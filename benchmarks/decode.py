"""Decoding speed: generation with quant.kernels: triton against quant.kernels: bitsandbytes.

    python benchmarks/decode.py                                  # on a GPU: CodeLlama-7B architecture, random weights
    python benchmarks/decode.py --scale 32 --layers 2 --new-tokens 8   # without one: a run of the script

A random-weight model is loaded once in 4 bits (NF4, double quant, bf16 compute) through qlcode's
loading path and run as bitsandbytes runs it (kernels: bitsandbytes: its matmul_4bit for every
forward, which picks its fused kernel or dequantize + matmul by GPU and rows), then patched in
place with quant.kernels: triton and run again: the prompt's forward (batch x 32 rows) through
qlcode's Triton dequantization and a matmul, each new token's (batch rows) through bitsandbytes'
matmul_4bit called from qlcode's forward, as long as there are at most 16 rows. Greedy generation
of --new-tokens tokens after a 32-token prompt, for each batch size; tokens/s counts generated
tokens over the whole call. "same tokens" compares the two generations (random weights make
near-ties, so a late divergence is rounding, not a bug).
"""

from __future__ import annotations

import argparse

import harness
import torch


def generate(model, batch: int, args, kernels: str) -> tuple[float, torch.Tensor]:
    """(generated tokens/s, the generated tokens) for one batch size."""
    prompt = torch.randint(3, harness.VOCAB, (batch, 32), generator=torch.Generator().manual_seed(batch)).to(harness.DEVICE)
    out = []

    def run() -> None:
        with torch.no_grad():
            out.append(model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0))

    seconds = harness.seconds_per_call(run, args.iters, warmup=1)
    print(f"kernels {kernels}, batch {batch}: {batch * args.new_tokens / seconds:,.1f} tokens/s", flush=True)  # progress, if cut off
    return batch * args.new_tokens / seconds, out[-1][:, prompt.shape[1]:].cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide the model's widths (CPU runs)")
    ap.add_argument("--layers", type=int, default=None, help="default: the architecture's 32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()

    from qlcode.models import Quantization, load_base, use_kernels

    model_dir = harness.random_codellama("7B", args.scale, args.layers)
    model = load_base(str(model_dir), Quantization(bits=4, kernels="bitsandbytes")).eval()  # random weights, no tokenizer
    theirs = {batch: generate(model, batch, args, "bitsandbytes") for batch in args.batch}
    use_kernels(model, Quantization(bits=4, kernels="triton"))  # the same model, patched in place
    ours = {batch: generate(model, batch, args, "triton") for batch in args.batch}
    rows = []
    for batch in args.batch:
        (their_tps, their_tokens), (our_tps, our_tokens) = theirs[batch], ours[batch]
        same = (our_tokens == their_tokens).float().mean().item()
        rows.append([batch, f"{their_tps:,.1f}", f"{our_tps:,.1f}", f"{our_tps / their_tps:.2f}x", f"{100 * same:.0f}%"])
    print(harness.header(f"decode: CodeLlama-7B architecture (/{args.scale}, {args.layers or 32} layers), NF4 + double quant, "
                         f"bf16 compute, greedy, {args.new_tokens} new tokens after 32, {args.iters} runs"))
    harness.print_table(["batch", "kernels: bitsandbytes tokens/s", "kernels: triton tokens/s", "triton / bitsandbytes",
                         "same tokens"], rows)


if __name__ == "__main__":
    main()
