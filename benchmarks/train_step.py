"""A QLoRA SFT step on the CodeLlama-7B architecture: qlcode's Triton kernels against peft + bitsandbytes.

    python benchmarks/train_step.py                                   # on a GPU (random weights, no download)
    python benchmarks/train_step.py --scale 32 --layers 2 --seq-len 64 --steps 2   # without one: a run of the script

A random-weight model is loaded once through qlcode's loading path (NF4, double quant, bf16
compute) and wrapped with recipes/python-sft.yaml's LoRA settings (r 16, all linear layers) and
gradient checkpointing. The baseline is exactly peft over bitsandbytes (quant.kernels:
bitsandbytes); then the same model is patched in place with quant.kernels: triton. One step is
forward, backward and an 8-bit AdamW update (learning rate 0, so the weights stay the same for
both) of micro batch 2 x seq-len tokens under bf16 autocast. Same process, same GPU, baseline
first. The first step's loss is printed for both: the kernels must not change it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import harness
import torch


def measure(model, opt, ids: torch.Tensor, args) -> tuple[float, str, float]:
    """(tokens/s, peak GPU memory in GiB, first-step loss) of args.steps steps after args.warmup."""
    losses = []

    def step() -> None:
        with torch.autocast(harness.DEVICE.type, dtype=torch.bfloat16, enabled=harness.GPU):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    harness.free_memory()
    seconds = harness.seconds_per_call(step, args.steps, warmup=args.warmup)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if harness.GPU else "-"
    return ids.numel() / seconds, peak, losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide the model's widths (CPU runs)")
    ap.add_argument("--layers", type=int, default=None, help="default: the architecture's 32")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    import bitsandbytes as bnb

    from qlcode.models import quantization_of, use_kernels
    from qlcode.recipe import load_recipe
    from qlcode.train import trainable_model

    model_dir = harness.random_codellama("7B", args.scale, args.layers)
    recipe = load_recipe(harness.REPO / "recipes" / "python-sft.yaml",
                         [f"model.base={model_dir}", "quant.kernels=bitsandbytes", "lora.dropout=0"])
    model = trainable_model(recipe).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the optimizer does all its work but the weights stay, so both variants step the same model
    opt = bnb.optim.AdamW8bit(params, lr=0.0) if harness.GPU else torch.optim.AdamW(params, lr=0.0)
    ids = torch.randint(3, harness.VOCAB, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(harness.DEVICE)
    results = {"bitsandbytes": measure(model, opt, ids, args)}
    use_kernels(model, replace(quantization_of(recipe), kernels="triton"))  # the same model, patched in place
    results["triton"] = measure(model, opt, ids, args)
    print(harness.header(f"train step: CodeLlama-7B architecture (/{args.scale}, {args.layers or 32} layers), "
                         f"QLoRA r16 all-linear, micro batch {args.batch} x {args.seq_len}, gradient checkpointing, "
                         f"{args.steps} steps after {args.warmup}"))
    baseline = results["bitsandbytes"][0]
    rows = [[kernels, f"{tps:,.0f}", f"{tps / baseline:.2f}x", peak, f"{loss:.4f}"] for kernels, (tps, peak, loss) in results.items()]
    harness.print_table(["kernels", "tokens/s", "vs peft + bitsandbytes", "peak GPU memory (GiB)", "first-step loss"], rows)


if __name__ == "__main__":
    main()
