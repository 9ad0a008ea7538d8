"""A QLoRA SFT step on the CodeLlama-7B architecture: the plain stack, qlcode and each of its options, unsloth.

    python benchmarks/train_step.py                                   # on a GPU (random weights, no download)
    python benchmarks/train_step.py --unsloth                         # unsloth alone, in its own process
    python benchmarks/train_step.py --batch 1 --seq-len 84992 --memory-cap 24 --repeats 1 --steps 1 --warmup 1 \
        --only "qlcode, train.offload_activations=true"              # the planned longest on a 24 GB card
    python benchmarks/train_step.py --scale 32 --layers 2 --seq-len 64 --steps 1 --warmup 1   # without a GPU

A random-weight model (harness.random_codellama) is loaded in 4 bits (NF4, double quant, bf16
compute) and given recipes/python-sft.yaml's LoRA: r 16, alpha 32, dropout 0.05 (the recipes'),
every linear layer, gradient checkpointing. Configurations:

    peft + bitsandbytes   the plain stack: PEFT's k-bit preparation and LoRA over bitsandbytes
    qlcode                qlcode's loading path as `qlcode train` runs it (quant.kernels, fused blocks,
                          frozen embeddings in bf16)
    qlcode, <override>    the same with one recipe option changed; train.compile=true compiles the model
                          as the Trainer does (inductor), and its compile time is the last column

One step is forward, backward and an 8-bit AdamW update (learning rate 0, so every repeat steps the
same weights) of micro batch 2 x seq-len tokens under bf16 autocast. All configurations are loaded
in one process; each is measured `--repeats` times, in alternating order (forward, then backward
through the list), each time `--steps` steps after the warmup. Peak memory is each configuration's
own: the memory its loading and warmup added (weights, LoRA, optimizer state) plus the highest
allocation above that during its steps. unsloth patches transformers when imported, so it runs in a
process of its own (--unsloth), with the same settings and the same table row.
"""

from __future__ import annotations

import argparse
import statistics

import harness
import torch

# configuration -> recipe overrides on top of python-sft.yaml's (None: the plain peft + bitsandbytes stack)
CONFIGS: dict[str, list[str] | None] = {
    "peft + bitsandbytes": None,
    "qlcode": [],
    "qlcode, quant.fused_blocks=false": ["quant.fused_blocks=false"],
    "qlcode, train.offload_activations=true": ["train.offload_activations=true"],
    "qlcode, train.liger=true": ["train.liger=true"],  # GPU only (liger's kernels): left out on CPU
    # compiling the 7B takes minutes: run with --only (a step of its own in gpu_session.sh), not by default
    "qlcode, train.compile=true": ["train.compile=true"],
}
DEFAULT = [n for n in CONFIGS if "compile" not in n and (harness.GPU or "liger" not in n)]


def recipe_for(model_dir, overrides: list[str]):
    from qlcode.recipe import load_recipe

    kernels = [] if harness.GPU else ["quant.kernels=triton"]  # auto: triton on a GPU; the interpreter on CPU
    return load_recipe(harness.REPO / "recipes" / "python-sft.yaml", [f"model.base={model_dir}", *kernels, *overrides])


def qlcode_model(model_dir, overrides: list[str]):
    """qlcode's model as `qlcode train` trains it; with train.compile, compiled as the Trainer does for
    TrainingArguments.torch_compile (accelerate: torch.compile(model, backend=...), default mode)."""
    from qlcode.train import COMPILE_BACKEND, trainable_model

    recipe = recipe_for(model_dir, overrides)
    model = trainable_model(recipe)
    return torch.compile(model, backend=COMPILE_BACKEND) if recipe.train.compile else model


def plain_stack(model_dir, recipe):
    """peft + bitsandbytes exactly: no qlcode kernels, patches or dtype changes."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from qlcode.models import Quantization, load_base

    base = load_base(str(model_dir), Quantization(kernels="bitsandbytes"))
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = recipe.lora
    torch.manual_seed(recipe.train.seed)
    return get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                           target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def unsloth_model(model_dir, recipe, seq_len: int):
    from transformers import AutoTokenizer
    from unsloth import FastLanguageModel

    from qlcode.builtin import MODELS

    if not (model_dir / "tokenizer.json").is_file():  # unsloth loads a tokenizer beside the weights
        AutoTokenizer.from_pretrained(MODELS["micro-codellama"]).save_pretrained(model_dir)
    model, _ = FastLanguageModel.from_pretrained(str(model_dir), max_seq_length=seq_len, dtype=torch.bfloat16,
                                                 load_in_4bit=True)
    lora = recipe.lora
    return FastLanguageModel.get_peft_model(
        model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth", random_state=recipe.train.seed)


class Configuration:
    """One model with its optimizer, its own memory, and what its repeats measured."""

    def __init__(self, name: str, build) -> None:
        import bitsandbytes as bnb

        harness.free_memory()
        before = torch.cuda.memory_allocated() if harness.GPU else 0
        self.name = name
        self.model = build().train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        # lr 0: the optimizer does all its work but the weights stay, so every repeat steps the same model
        self.opt = bnb.optim.AdamW8bit(params, lr=0.0) if harness.GPU else torch.optim.AdamW(params, lr=0.0)
        self.build_bytes = before
        self.rates: list[float] = []
        self.peaks: list[int] = []
        self.first_loss: float | None = None

    def step(self, ids: torch.Tensor) -> float:
        with torch.autocast(harness.DEVICE.type, dtype=torch.bfloat16, enabled=harness.GPU):
            loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def warm_up(self, ids: torch.Tensor, steps: int) -> None:
        from qlcode.train import compile_seconds

        compiled = compile_seconds()
        torch.manual_seed(0)  # the same dropout draws for every configuration's first step
        self.first_loss = self.step(ids)
        for _ in range(steps - 1):
            self.step(ids)
        self.compile_seconds = compile_seconds() - compiled  # 0 unless compiled: torch's own count, as qlcode train's summary
        harness.free_memory()
        self.own = torch.cuda.memory_allocated() - self.build_bytes if harness.GPU else 0  # weights, LoRA, optimizer

    def measure(self, ids: torch.Tensor, steps: int) -> None:
        harness.free_memory()
        resting = torch.cuda.memory_allocated() if harness.GPU else 0
        seconds = harness.seconds_per_call(lambda: self.step(ids), steps, warmup=0)
        self.rates.append(ids.numel() / seconds)
        if harness.GPU:
            self.peaks.append(self.own + torch.cuda.max_memory_allocated() - resting)


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide the model's widths (CPU runs)")
    ap.add_argument("--layers", type=int, default=None, help="default: the architecture's 32")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="steps per repeat")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help=f"configurations to run, of {list(CONFIGS)} (default: {DEFAULT})")
    ap.add_argument("--unsloth", action="store_true", help="measure unsloth alone (it patches transformers on import)")
    ap.add_argument("--memory-cap", type=float, default=None, metavar="GIB",
                    help="cap this process's GPU memory (a consumer GPU on a larger one)")
    args = ap.parse_args()
    if args.memory_cap and harness.GPU:
        torch.cuda.set_per_process_memory_fraction(args.memory_cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)

    model_dir = harness.random_codellama("7B", args.scale, args.layers)
    recipe = recipe_for(model_dir, [])
    if args.unsloth:
        import unsloth  # noqa: F401  (first: it patches transformers and peft)

        builds = {f"unsloth {unsloth.__version__}": lambda: unsloth_model(model_dir, recipe, args.seq_len)}
    else:
        builds = {n: (lambda: plain_stack(model_dir, recipe)) if CONFIGS[n] is None
                  else (lambda o=CONFIGS[n]: qlcode_model(model_dir, o)) for n in args.only or DEFAULT}
    ids = torch.randint(3, harness.VOCAB, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(harness.DEVICE)
    configs = []
    for name, build in builds.items():
        c = Configuration(name, build)
        c.warm_up(ids, args.warmup)
        configs.append(c)
    for rep in range(args.repeats):
        for c in configs if rep % 2 == 0 else configs[::-1]:
            c.measure(ids, args.steps)

    cap = f", GPU memory capped at {args.memory_cap:g} GiB" if args.memory_cap and harness.GPU else ""
    print(harness.header(f"train step{cap}: CodeLlama-7B architecture (/{args.scale}, {args.layers or 32} layers), QLoRA r16 "
                         f"all-linear, dropout {recipe.lora.dropout}, micro batch {args.batch} x {args.seq_len}, gradient "
                         f"checkpointing; {args.repeats} repeats of {args.steps} steps in alternating order after "
                         f"{args.warmup} warmup steps"))
    base = configs[0]
    rows = []
    for c in configs:
        rate = statistics.median(c.rates)
        peak = statistics.median(c.peaks) / 2**30 if c.peaks else None
        base_peak = statistics.median(base.peaks) / 2**30 if base.peaks else None
        rows.append([c.name, f"{rate:,.0f}", spread(c.rates), f"{rate / statistics.median(base.rates):.2f}x",
                     f"{peak:.2f}" if peak else "-", f"{peak / base_peak:.2f}x" if peak else "-", f"{c.first_loss:.4f}",
                     f"{c.compile_seconds:.1f}" if c.compile_seconds else "-"])
    harness.print_table(["configuration", "tokens/s (median)", "tokens/s (min-max)", f"vs {base.name}",
                         "peak GiB (median)", f"peak vs {base.name}", "first-step loss", "compile s (warmup)"], rows)


if __name__ == "__main__":
    main()
