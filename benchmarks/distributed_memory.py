"""Per-GPU memory of QLoRA on Code Llama 34B and 70B under DDP, FSDP and DeepSpeed ZeRO-2/3: computed
from the models' shapes, not measured (this project has had no GPU). Prints the README's table.

    python benchmarks/distributed_memory.py

Counted: NF4 linear weights with double quantization (0.5 B + 1/64 B absmax + 4/16384 B second level
per parameter), embeddings, lm_head and norms in bf16, a LoRA r=16 on every linear layer kept in fp32
(qlcode keeps fp32 master weights) with fp32 gradients and 8-bit Adam (2 B per parameter), and the
activations gradient checkpointing keeps (one bf16 hidden state per layer and token, and the fp32
logits) for one 4096-token sequence. FSDP/ZeRO-3 hold one gathered decoder layer at a time, two with
prefetch. Not counted: the CUDA context and allocator slack (about 1-2 GB), the recomputed layer's
own activations.
"""

from __future__ import annotations

GB = 1e9
NF4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes per parameter
MODELS = {  # hidden, intermediate, layers, kv heads x head dim, vocab (the models' config.json)
    "CodeLlama-34B": (8192, 22016, 48, 8 * 128, 32000),
    "CodeLlama-70B": (8192, 28672, 80, 8 * 128, 32016),
}
R, SEQ = 16, 4096


def parts(hidden: int, inter: int, layers: int, kv: int, vocab: int) -> dict[str, float]:
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    linear = sum(i * o for i, o in shapes) * layers
    lora = sum(R * (i + o) for i, o in shapes) * layers
    return {
        "layer4": sum(i * o for i, o in shapes) * NF4,
        "weights": linear * NF4 + (2 * vocab * hidden + (2 * layers + 1) * hidden) * 2,
        "lora": lora * 4,
        "lora_train": lora * (4 + 2),  # fp32 gradients, 8-bit Adam's two states
        "activations": layers * SEQ * hidden * 2 + SEQ * vocab * 4,
        "params": linear + 2 * vocab * hidden,
    }


def per_gpu(p: dict[str, float], strategy: str, n: int) -> float:
    if strategy == "DDP":
        return p["weights"] + p["lora"] + p["lora_train"] + p["activations"]
    if strategy == "ZeRO-2":
        return p["weights"] + p["lora"] + p["lora_train"] / n + p["activations"]
    # FSDP and ZeRO-3: everything sharded, plus the gathered layers in flight
    return (p["weights"] + p["lora"] + p["lora_train"]) / n + 2 * p["layer4"] + p["activations"]


def table() -> str:
    gpus = (2, 4, 8)
    lines = ["| model | strategy | " + " | ".join(f"{n} GPUs" for n in gpus) + " |", "| --- | --- |" + " --- |" * len(gpus)]
    for name, shape in MODELS.items():
        p = parts(*shape)
        for strategy in ("DDP", "ZeRO-2", "FSDP / ZeRO-3"):
            lines.append(f"| {name} ({p['params'] / 1e9:.1f}B) | {strategy} | "
                         + " | ".join(f"{per_gpu(p, strategy, n) / GB:.1f} GB" for n in gpus) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
