"""pass@k through exported GGUF files (llama.cpp) beside the same model in transformers.

    pip install 'qlcode[llama-cpp]'   # builds llama.cpp from source: tens of minutes on 2 cores
    python benchmarks/gguf_pass_at_k.py [MODEL] [--n 32] [--temperature 1.0] [--max-new-tokens 16]

Exports MODEL (default builtin:micro-codellama) to f16, q8_0 and q4_k_m GGUF files with qlcode's
exporter, then scores the held-out split of builtin:python-basics (the benchmark the micro model
solves some of) with transformers in fp32 and with each file through llama.cpp (qlcode eval
--gguf's engine), n samples per problem. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qlcode.execution.benchmarks import load  # noqa: E402
from qlcode.execution.evaluate import execute, summarize  # noqa: E402
from qlcode.models import base_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="builtin:micro-codellama")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    args = ap.parse_args()
    import llama_cpp

    from qlcode.execution.engines.llama_cpp import LlamaCppEngine
    from qlcode.execution.generate import sample
    from qlcode.export.gguf_export import export_gguf
    from qlcode.export.quantize import KQUANTS, export_kquant
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    source = Path(base_path(args.model))
    problems = load("python-basics")
    ks = [k for k in (1, 8) if k <= args.n]
    print(f"{source.name}, python-basics held-out ({len(problems)} problems), n={args.n}, T={args.temperature}, "
          f"max_new_tokens={args.max_new_tokens}, llama-cpp-python {llama_cpp.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| weights | engine | file MiB | " + " | ".join(f"pass@{k}" for k in ks) + " | generate+execute s |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in ks) + " | --- |")

    def row(label: str, engine: str, size: str, completions) -> None:
        start = time.perf_counter()
        summary = summarize(execute(problems, completions, show_progress=False), ks)
        print(f"| {label} | {engine} | {size} | " + " | ".join(f"{100 * summary[f'pass@{k}']:.1f}%" for k in ks)
              + f" | {time.perf_counter() - start:.0f} |", flush=True)

    loaded = load_model(args.model, None, Quantization(bits=None))
    row("fp32 (source)", "transformers", "-", lambda p: sample(loaded.model, loaded.tokenizer, p, loaded.instruct, args.n,
                                                                args.temperature, args.max_new_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types.split(","):
            out = Path(tmp) / f"model-{kind}.gguf"
            (export_kquant if kind in KQUANTS else export_gguf)(source, out, kind)
            engine = LlamaCppEngine(out)
            row(kind, "llama.cpp", f"{out.stat().st_size / 2**20:.1f}",
                lambda p: engine.sample(p, loaded.instruct, args.n, args.temperature, args.max_new_tokens))


if __name__ == "__main__":
    main()
