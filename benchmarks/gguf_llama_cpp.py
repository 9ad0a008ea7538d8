"""Load qlcode's GGUF export in llama.cpp and compare its logits with transformers.

    pip install "qlcode[llama-cpp]"   # builds llama.cpp from source: tens of minutes on 2 cores
    python benchmarks/gguf_llama_cpp.py [MODEL_DIR ...]   # default: the builtin micro model
    python benchmarks/gguf_llama_cpp.py --families        # a tiny model of each family, real tokenizer

MODEL_DIR is a model directory of any family qlcode knows (Code Llama, Qwen2.5-Coder, DeepSeek-Coder,
StarCoder2: a base, or `qlcode merge`'s output). `--families` builds, for each family, the tiny model
the tests run in llama.cpp (tests/conftest.real_vocab_model: random weights of its architecture, its
real tokenizer, its Hub vocab_size). Each is exported to f16 and q8_0 GGUF files and loaded by llama.cpp
(qlcode's loader: extra buffer types off); for a code prompt it reports whether llama.cpp tokenizes it to
the Hugging Face tokenizer's ids, and the largest and mean |logit difference| and the top-1 agreement
against transformers in fp32. Prints a Markdown table per model.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qlcode.execution.engines.llama_cpp import load_gguf  # noqa: E402
from qlcode.export.gguf_export import export_gguf  # noqa: E402
from qlcode.models import base_path  # noqa: E402

PROMPT = "def fibonacci(n: int) -> int:\n    if n in (0, 1):\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"


def compare(model_dir: Path, tmp: Path) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    print(f"\n{model_dir.name}: {len(ids)} prompt tokens, logits' standard deviation {want.std():.2f}\n")
    print("| GGUF type | same token ids | max abs logit diff | mean abs logit diff | top-1 agreement |\n| --- | --- | --- | --- | --- |")
    for kind in ("f16", "q8_0"):
        path = tmp / f"{model_dir.name}-{kind}.gguf"
        export_gguf(model_dir, path, kind)
        llm = load_gguf(path, n_ctx=512, logits_all=True)
        same = llm.tokenize(PROMPT.encode()) == ids
        llm.eval(ids)
        diff = np.abs(np.array(llm.scores[: len(ids)]) - want)
        top1 = (np.array(llm.scores[: len(ids)]).argmax(-1) == want.argmax(-1)).mean()
        print(f"| {kind} | {same} | {diff.max():.4f} | {diff.mean():.4f} | {100 * top1:.0f}% |")


def main() -> None:
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        if sys.argv[1:] == ["--families"]:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import REAL_VOCAB, real_vocab_model

            dirs = []
            for family in REAL_VOCAB:
                (Path(tmp) / family).mkdir()
                dirs.append(real_vocab_model(family, Path(tmp) / family))
        else:
            dirs = [Path(base_path(d)) for d in sys.argv[1:] or ["builtin:micro-codellama"]]
        for model_dir in dirs:
            compare(model_dir, Path(tmp))


if __name__ == "__main__":
    main()
