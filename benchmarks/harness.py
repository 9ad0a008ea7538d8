"""What the GPU benchmarks share: the run's header, timing, CodeLlama's shapes, a random-weight CodeLlama.

On a GPU they measure. Without one (CI, this project's CPU machines) each script still runs end to
end with the shapes divided by --scale and Triton in its interpreter: a check that the script works,
whose timings are not figures (the header says so).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# hidden, intermediate, layers, attention heads, key-value heads: the Hub's codellama/CodeLlama-*-hf configs
CODELLAMA = {"7B": (4096, 11008, 32, 32, 32), "13B": (5120, 13824, 40, 40, 40), "34B": (8192, 22016, 48, 64, 8)}
VOCAB = 32016
GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")


def projections(arch: str, scale: int = 1) -> dict[str, tuple[int, int]]:
    """(out, in) of the seven projections of one layer, each dimension divided by `scale`."""
    h, f, _, heads, kv = CODELLAMA[arch]
    kv_width = h // heads * kv
    shapes = {"q": (h, h), "k": (kv_width, h), "v": (kv_width, h), "o": (h, h), "gate": (f, h), "up": (f, h), "down": (h, f)}
    return {name: (n // scale, k // scale) for name, (n, k) in shapes.items()}


def seconds_per_call(fn: Callable[[], object], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if GPU:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def header(title: str) -> str:
    import bitsandbytes
    import peft
    import transformers
    import triton

    machine = (torch.cuda.get_device_name() if GPU
               else "CPU, Triton interpreter: a run of the script, its timings are not figures")
    return (f"{title}\n{machine}; torch {torch.__version__}, triton {triton.__version__}, "
            f"bitsandbytes {bitsandbytes.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
            f"{time.strftime('%Y-%m-%d')}\n")


def print_table(columns: list[str], rows: list[list[object]]) -> None:
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def random_codellama(arch: str, scale: int = 1, layers: int | None = None) -> Path:
    """CodeLlama-`arch`'s architecture with random bf16 weights, saved once under build/: the benchmarks
    load it through qlcode's own loading path (4-bit quantization on load), with no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h, f, n_layers, heads, kv = CODELLAMA[arch]
    layers = layers or n_layers
    path = REPO / "build" / "bench-models" / f"codellama-{arch}-random-s{scale}-l{layers}"
    if (path / "config.json").is_file():
        return path
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=h // scale, intermediate_size=f // scale,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         head_dim=h // scale // heads, max_position_embeddings=16384, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.replace(path)
    return path


def free_memory() -> None:
    import gc

    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cpu_peak_bytes(run: Callable[[], object]) -> int:
    """The most bytes `run` holds allocated at once on the CPU beyond what existed before it: the memory
    timeline of torch's profiler (a private module of torch 2.13), exact to the tensor."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak
