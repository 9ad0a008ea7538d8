"""Load qlcode's GGUF export in llama.cpp and compare its logits with transformers.

    pip install llama-cpp-python   # builds llama.cpp from source: tens of minutes on 2 cores
    python benchmarks/gguf_llama_cpp.py [MODEL_DIR]      # default: the builtin micro model

MODEL_DIR is a model directory of any family qlcode knows (Code Llama, Qwen2.5-Coder, DeepSeek-Coder,
StarCoder2: a base, or `qlcode merge`'s output). Exports it to f16 and q8_0 GGUF files, then for a code prompt checks that llama.cpp
tokenizes it to the same ids as the Hugging Face tokenizer and reports the largest logit
difference and the top-1 agreement against transformers in fp32. Prints a Markdown table.
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

from qlcode.export.gguf_export import export_gguf  # noqa: E402
from qlcode.models import base_path  # noqa: E402

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n"


def main() -> None:
    import llama_cpp

    model_dir = Path(base_path(sys.argv[1] if len(sys.argv) > 1 else "builtin:micro-codellama"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    print(f"{model_dir.name}, llama-cpp-python {llama_cpp.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| GGUF type | same token ids | max abs logit diff vs transformers fp32 | top-1 agreement |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("f16", "q8_0"):
            path = Path(tmp) / f"model-{kind}.gguf"
            export_gguf(model_dir, path, kind)
            llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=512, verbose=False)
            bos = bool(ids) and ids[0] == tok.bos_token_id  # Code Llama and DeepSeek-Coder: yes; Qwen, StarCoder2: no
            same = llm.tokenize(PROMPT.encode(), add_bos=bos, special=False) == ids
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
            print(f"| {kind} | {same} | {np.abs(got - want).max():.4f} | {100 * (got.argmax(-1) == want.argmax(-1)).mean():.0f}% |")


if __name__ == "__main__":
    main()
