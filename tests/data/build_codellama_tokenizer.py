"""Rebuild tests/data/codellama-tokenizer/: Code Llama's tokenizer from Llama 2's vocabulary, offline.

Code Llama's tokenizer is Llama 2's SentencePiece vocabulary (32,000 pieces) plus 16 pieces at ids
32000-32015, four of them the infilling tokens (`▁<PRE>` 32007, `▁<SUF>` 32008, `▁<MID>` 32009,
`▁<EOT>` 32010), as in the Hub's codellama/CodeLlama-7b-hf tokenizer (vocab size 32016). The
vocabulary comes from llama.cpp's `models/ggml-vocab-llama-spm.gguf` (MIT), which the
llama-cpp-python source distribution on PyPI carries:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/x
    tar xzf /tmp/x/llama_cpp_python-0.3.36.tar.gz -C /tmp/x
    python tests/data/build_codellama_tokenizer.py /tmp/x/llama_cpp_python-0.3.36/vendor/llama.cpp/models

The saved tokenizer is transformers' CodeLlamaTokenizer (`tokenizer.json`, written compact, and
`tokenizer_config.json`); llama.cpp's expected tokenizations of that vocabulary (`.inp`/`.out`,
made with the Hub's Llama 2 tokenizer) are copied beside it for the tests.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, CodeLlamaTokenizer

from qlcode.files import move_files_into

GGUF = "ggml-vocab-llama-spm.gguf"
OUT = Path(__file__).resolve().parent / "codellama-tokenizer"
# ids 32000-32015 of the Hub's CodeLlama-7b-hf vocabulary; only the four complete tags are ever produced
CODE_LLAMA_PIECES = ["▁<SU", "▁<SUF", "▁<PRE", "▁<M", "▁<MID", "▁<E", "▁<EOT", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>",
                     *("▁" + "<EOT>" * k for k in range(2, 7))]


def build(models_dir: Path, out: Path = OUT) -> None:
    llama = AutoTokenizer.from_pretrained(models_dir, gguf_file=GGUF)
    model = json.loads(llama.backend_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    assert len(vocab) == 32000, f"{GGUF}: expected Llama 2's 32,000 pieces, found {len(vocab)}"
    vocab.update({piece: 32000 + i for i, piece in enumerate(CODE_LLAMA_PIECES)})
    tok = CodeLlamaTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]])
    assert [tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id] == [32007, 32008, 32009, 32010]
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tok.save_pretrained(tmp)
    tok.backend_tokenizer.save(str(tmp / "tokenizer.json"), pretty=False)  # 1.5 MB instead of 3.6
    for suffix in (".inp", ".out"):
        shutil.copyfile(models_dir / (GGUF + suffix), tmp / (GGUF + suffix))
    shutil.rmtree(out, ignore_errors=True)
    move_files_into(tmp, out, last="tokenizer_config.json")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print(f"wrote {OUT}")
