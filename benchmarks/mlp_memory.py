"""Peak memory of one MLP block's forward and backward: peft + bitsandbytes, qlcode's per-layer path, the fused MLP.

    python benchmarks/mlp_memory.py                          # Qwen2 and Llama shapes, 512 and 2048 tokens
    python benchmarks/mlp_memory.py --family llama --tokens 128

A one-layer model of each family with random weights (hidden 128; intermediate 704 for Qwen2, about
Qwen2.5-Coder-7B's 5.3x, and 344 for Llama, CodeLlama-7B's 2.7x), loaded in 4 bits through
qlcode's loading path, LoRA r16 on all linear layers with dropout 0.05. One forward and backward of
its MLP under bf16 autocast on an fp32 input (the RMSNorm's output under QLoRA), after one to warm
up. The peak above what existed before: on a GPU torch.cuda.max_memory_allocated, on CPU the
allocator's timeline from torch's profiler (the method of tests/test_fused_qlora.py: exact bytes,
so these are figures on CPU too; only timings are not). Printed per token and unit of intermediate
width, where the three paths' activations all scale.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import torch

INTERMEDIATE = {"qwen2": 704, "llama": 344}
PATHS = ("peft + bitsandbytes", "qlcode per-layer", "qlcode fused")


def peak_bytes(run) -> int:
    """The most bytes `run` holds allocated at once beyond what existed before it."""
    if harness.GPU:
        harness.free_memory()
        before = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - before
    return harness.cpu_peak_bytes(run)


def one_layer(family: str, root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=300, hidden_size=128, intermediate_size=INTERMEDIATE[family], num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**common)) if family == "qwen2" else LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(root / family)
    return root / family


def mlp_peak(path: Path, kind: str, tokens: int) -> int:
    from peft import LoraConfig, get_peft_model

    from qlcode.kernels.fused_blocks import patch_blocks
    from qlcode.kernels.qlora_linear import TRITON, patch_model
    from qlcode.models import load_base

    torch.manual_seed(0)
    model = get_peft_model(load_base(str(path)), LoraConfig(r=16, lora_dropout=0.05, target_modules="all-linear")).train()
    if kind != "peft + bitsandbytes":
        patch_model(model, TRITON)
    if kind == "qlcode fused":
        assert patch_blocks(model, TRITON) == 2
    mlp = model.base_model.model.model.layers[0].mlp
    x = torch.randn(1, tokens, 128, device=harness.DEVICE, requires_grad=True)
    grad = torch.randn(1, tokens, 128, device=harness.DEVICE)

    def step() -> None:
        with torch.autocast(harness.DEVICE.type, dtype=torch.bfloat16):
            y = mlp(x)
        y.backward(grad)
        x.grad = None
        for p in mlp.parameters():
            p.grad = None

    step()
    return peak_bytes(step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", choices=list(INTERMEDIATE), default=list(INTERMEDIATE))
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    args = ap.parse_args()
    print(harness.header("One MLP block's forward + backward: peak bytes per token and intermediate unit (bf16 autocast)"))
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for family in args.family:
            path = one_layer(family, Path(root))
            for tokens in args.tokens:
                units = tokens * INTERMEDIATE[family]
                peaks = [mlp_peak(path, kind, tokens) / units for kind in PATHS]
                rows.append([family, INTERMEDIATE[family], tokens, *(f"{p:.1f}" for p in peaks), f"{peaks[2] / peaks[0]:.2f}x"])
    harness.print_table(["family", "intermediate", "tokens", *PATHS, "fused / peft"], rows)


if __name__ == "__main__":
    main()
