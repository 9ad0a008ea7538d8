"""Rebuild tests/data/{qwen2-coder,deepseek-coder,starcoder2}-tokenizer/: the real vocabularies, offline.

llama.cpp ships each family's vocabulary (MIT) as a vocab-only GGUF, with the tokenizations the
family's own Hugging Face tokenizer gives for 46 test texts (`.inp`/`.out`); the llama-cpp-python
source distribution on PyPI carries them:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/x
    tar xzf /tmp/x/llama_cpp_python-0.3.36.tar.gz -C /tmp/x
    python tests/data/build_family_tokenizers.py /tmp/x/llama_cpp_python-0.3.36/vendor/llama.cpp/models

Each is rebuilt as a `tokenizers` byte-level BPE (vocabulary and merges from the GGUF) with what the
vocab-only file lacks added as the family's Hub tokenizer has it:
- Qwen2.5-Coder: `ggml-vocab-qwen2.gguf` is Qwen2's (151,643 pieces, then <|endoftext|> <|im_start|>
  <|im_end|> and placeholders); Qwen2.5 added 19 tokens at 151646-151664, among them <|fim_prefix|>
  151659, <|fim_middle|> 151660, <|fim_suffix|> 151661, <|fim_pad|> 151662, <|repo_name|> 151663,
  <|file_sep|> 151664 (Qwen2.5-Coder's tokenizer_config.json). eos = pad = <|endoftext|>, no bos.
- DeepSeek-Coder: 32,000 pieces, 13 extra characters (32000-32012) and its specials 32013-32021;
  bos <｜begin▁of▁sentence｜> added to every text, eos <｜end▁of▁sentence｜>.
- StarCoder2: 49,152 pieces, its 38 special tokens first (<|endoftext|> 0, <fim_prefix> 1,
  <fim_middle> 2, <fim_suffix> 3, <fim_pad> 4, <repo_name> 5, <file_sep> 6, ...);
  bos = eos = unk = <|endoftext|>.
The pre-tokenizers are the families': Qwen2's split regex (as transformers converts it); for
DeepSeek-Coder and StarCoder2 digits one by one then GPT-2's byte-level regex, with which all 46
of llama.cpp's expected tokenizations match (tests/test_family_tokenizers.py). tokenizer.json is
stored xz-compressed (Qwen2.5-Coder's: 1.35 MB compressed); the tests unpack it into a temporary folder.
"""

from __future__ import annotations

import json
import lzma
import shutil
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
QWEN25_ADDED = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
DIGITS_THEN_BYTES = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _gguf_vocab(models_dir: Path, name: str) -> tuple[list[str], list[int], list[str], dict]:
    """(tokens, token types, merges, the transformers conversion's pre-tokenizer) of a vocab-only GGUF."""
    import gguf

    reader = gguf.GGUFReader(models_dir / name)
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    converted = AutoTokenizer.from_pretrained(models_dir, gguf_file=name)
    pre = json.loads(converted.backend_tokenizer.to_str())["pre_tokenizer"]
    return field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges"), pre


def _bpe(tokens: list[str], merges: list[str], n: int, pre) -> Tokenizer:
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens[:n])}, [tuple(m.split(" ", 1)) for m in merges],
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


def qwen(models_dir: Path) -> PreTrainedTokenizerFast:
    tokens, _, merges, pre = _gguf_vocab(models_dir, "ggml-vocab-qwen2.gguf")
    assert tokens[151643:151646] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _bpe(tokens, merges, 151643, Tokenizer.from_str(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": pre, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "vocab": {}, "merges": []}})).pre_tokenizer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN25_ADDED]])
    assert tok.token_to_id("<|fim_prefix|>") == 151659 and tok.token_to_id("<|file_sep|>") == 151664
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def deepseek(models_dir: Path) -> PreTrainedTokenizerFast:
    tokens, _, merges, _ = _gguf_vocab(models_dir, "ggml-vocab-deepseek-coder.gguf")
    tok = _bpe(tokens, merges, 32000, DIGITS_THEN_BYTES)
    tok.add_tokens([AddedToken(t, normalized=False) for t in tokens[32000:32013]])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[32013:32022]])
    bos = "<｜begin▁of▁sentence｜>"
    assert tok.token_to_id(bos) == 32013 and tok.token_to_id("<|EOT|>") == 32021
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, 32013)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<｜end▁of▁sentence｜>")


def starcoder2(models_dir: Path) -> PreTrainedTokenizerFast:
    tokens, types, merges, _ = _gguf_vocab(models_dir, "ggml-vocab-starcoder.gguf")
    tok = _bpe(tokens, merges, len(tokens), DIGITS_THEN_BYTES)
    specials = [t for t, kind in zip(tokens, types) if kind == 3]  # CONTROL
    assert specials[:7] == ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


BUILDS = {"qwen2-coder": (qwen, "ggml-vocab-qwen2.gguf"), "deepseek-coder": (deepseek, "ggml-vocab-deepseek-coder.gguf"),
          "starcoder2": (starcoder2, "ggml-vocab-starcoder.gguf")}


def build(models_dir: Path) -> None:
    for family, (make, gguf_name) in BUILDS.items():
        out = HERE / f"{family}-tokenizer"
        tok = make(models_dir)
        tmp = Path(tempfile.mkdtemp(dir=HERE, prefix=f".{out.name}."))
        tok.save_pretrained(tmp)
        data = tok.backend_tokenizer.to_str().encode()
        (tmp / "tokenizer.json").unlink()
        (tmp / "tokenizer.json.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        for suffix in (".inp", ".out"):
            shutil.copyfile(models_dir / (gguf_name + suffix), tmp / (gguf_name + suffix))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print("wrote", ", ".join(f"tests/data/{f}-tokenizer" for f in BUILDS))
