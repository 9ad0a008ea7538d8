"""Peak GPU memory of QLoRA SFT steps on the CodeLlama-7B architecture against `qlcode plan`.

    python benchmarks/plan_memory.py                          # on a GPU (random weights, no download)
    python benchmarks/plan_memory.py --scale 32 --layers 2 --seq-len 32 64   # without one: a run of the script

A random-weight model is loaded once through qlcode's loading path with recipes/python-sft.yaml's
settings (NF4, double quant, bf16 compute, LoRA r16 on all linear layers, dropout 0.05, the paged
8-bit AdamW; quant.kernels: bitsandbytes, the path the plan counts). For each (sequence length,
micro batch, gradient checkpointing), steps run as TRL 1.16's SFTTrainer runs them: bf16
autocast, its fused LM head (tiled log-probabilities), backward, optimizer step. One warm-up step
creates the optimizer state; the next step's peak of torch.cuda.max_memory_allocated is compared
with the plan's total less its CUDA context + allocator constant (memory torch does not count).
"""

from __future__ import annotations

import argparse
import itertools

import harness
import torch


def peak_of_one_step(model, opt, ids: torch.Tensor) -> float | None:
    """GiB allocated at the peak of one training step (None on CPU, where torch does not track it)."""

    def step() -> None:
        with torch.autocast(harness.DEVICE.type, dtype=torch.bfloat16, enabled=harness.GPU):
            loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from here on, as in every step after a run's first
    harness.free_memory()
    step()
    return torch.cuda.max_memory_allocated() / 2**30 if harness.GPU else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide the model's widths (CPU runs)")
    ap.add_argument("--layers", type=int, default=None, help="default: the architecture's 32")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import bitsandbytes as bnb
    from trl.trainer.utils import add_fused_lm_head

    from qlcode.plan import GiB, load_shapes, plan, settings
    from qlcode.plan.memory import CUDA_OVERHEAD
    from qlcode.recipe import load_recipe
    from qlcode.train import trainable_model

    model_dir = harness.random_codellama("7B", args.scale, args.layers)
    recipe = load_recipe(harness.REPO / "recipes" / "python-sft.yaml", [f"model.base={model_dir}", "quant.kernels=bitsandbytes"])
    model = trainable_model(recipe).train()
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    params = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW8bit(params, lr=0.0) if harness.GPU else bnb.optim.AdamW8bit(params, lr=0.0)
    shapes = load_shapes(str(model_dir))
    device = "cuda" if harness.GPU else "cpu"
    rows = []
    for seq, batch, checkpointing in itertools.product(args.seq_len, args.batch, (True, False)):
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.get_base_model().activation_checkpointing_disable()
        ids = torch.randint(3, harness.VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)).to(harness.DEVICE)
        measured = peak_of_one_step(model, opt, ids)
        run = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": seq}),
                                        "train": recipe.train.model_copy(update={"micro_batch_size": batch,
                                                                                 "gradient_checkpointing": checkpointing})})
        planned = plan(shapes, settings(run, device))
        expected = (planned.total - (CUDA_OVERHEAD if harness.GPU else 0)) / GiB
        rows.append([seq, batch, "on" if checkpointing else "off", f"{expected:.2f}",
                     "-" if measured is None else f"{measured:.2f}", "-" if measured is None else f"{measured / expected:.2f}"])
    print(harness.header(f"peak memory: CodeLlama-7B architecture (/{args.scale}, {args.layers or 32} layers), "
                         "QLoRA r16 all-linear, python-sft.yaml's settings, against qlcode plan"))
    harness.print_table(["seq len", "micro batch", "checkpointing", "plan without CUDA overhead (GiB)",
                         "measured peak allocated (GiB)", "measured / plan"], rows)


if __name__ == "__main__":
    main()
