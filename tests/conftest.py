"""Shared fixtures: a tiny Llama built in code (with the micro model's tokenizer) and recipe helpers."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU; it must be set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import logging
import lzma
import shutil
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from qlcode.builtin import MODELS
from qlcode.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with Code Llama's tokenizer layout, saved in fp32."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def codellama_tokenizer_dir() -> Path:
    """Code Llama's real tokenizer (Llama 2's SentencePiece vocabulary + 16 pieces), rebuilt offline."""
    return REPO / "tests" / "data" / "codellama-tokenizer"


@pytest.fixture(scope="session")
def stdlib_rows() -> list[dict]:
    import gzip

    from qlcode.builtin import DATASETS

    with gzip.open(DATASETS["stdlib-python-instruct"], "rt") as f:
        rows = [json.loads(line) for line in f]
    # short rows keep the tiny runs fast
    return sorted((r for r in rows if r["split"] == "train"), key=lambda r: len(r["output"]))[:64]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_recipe(tmp_path: Path, base: Path, data_file: Path, fmt: str = "alpaca", **sections) -> Recipe:
    """A small, fast recipe over the tiny base; sections override the defaults below."""
    tree = {
        "model": {"base": str(base)},
        "quant": {"bits": 4},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"datasets": [{"source": str(data_file), "format": fmt}], "max_length": 128, "validation": 0.25},
        "train": {"max_steps": 6, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-3,
                  "optimizer": "adamw_torch", "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 3,
                  "warmup": 0},
        "output": {"name": "run", "dir": str(tmp_path / "run")},
    }
    tree = merge(tree, sections)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_recipe(path)


@pytest.fixture
def alpaca_file(tmp_path, stdlib_rows) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", stdlib_rows[:32])


@pytest.fixture
def clean_adapters():
    """For tests that run shipped recipes: remove what they write under adapters/."""
    made: list[Path] = []
    yield made
    for p in made:
        shutil.rmtree(p, ignore_errors=True)


# --- one tiny model per code model family (qlcode.families), shared by the session -------------
# Each is its family's architecture at hidden size 64 with a small byte-level BPE trained here on
# code, carrying the family's special tokens (the real vocabularies are checked in
# tests/test_family_tokenizers.py; a 150k-entry embedding would make every step slow).
FAMILY_TOKENS = {  # family -> (bos, eos, its other special tokens), as its Hub tokenizers have them
    "qwen2-coder": (None, "<|endoftext|>", ["<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                                            "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]),
    "deepseek-coder": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                       ["<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<pad>", "<|EOT|>"]),
    "starcoder2": ("<|endoftext|>", "<|endoftext|>", ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                                      "<repo_name>", "<file_sep>"]),
}


def family_tokenizer(family: str):
    """A 512-entry byte-level BPE over the stdlib rows' code with `family`'s special tokens."""
    import gzip

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from qlcode.builtin import DATASETS

    bos, eos, others = FAMILY_TOKENS[family]
    specials = list(dict.fromkeys([t for t in (bos, eos) if t] + others))
    with gzip.open(DATASETS["stdlib-python-instruct"], "rt") as f:
        texts = [json.loads(line)["output"] for line in f][:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos and family == "deepseek-coder":  # DeepSeek-Coder's tokenizer adds bos to every text
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   unk_token=eos if family == "starcoder2" else None)


def family_config(family: str, tok):
    """The family's architecture, tiny: Qwen2 (q/k/v bias), Llama with linear RoPE scaling
    (DeepSeek-Coder), StarCoder2 (LayerNorm with bias, GELU MLP, sliding window)."""
    from transformers import Qwen2Config, Starcoder2Config

    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    if family == "qwen2-coder":
        return Qwen2Config(**common, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if family == "deepseek-coder":
        return LlamaConfig(**common, rms_norm_eps=1e-6,
                           rope_parameters={"rope_type": "linear", "rope_theta": 1e5, "factor": 4.0})
    # transformers' GGUF reader takes no RoPE base for starcoder2 (its default, 10000, is used here)
    return Starcoder2Config(**common, norm_epsilon=1e-5, use_bias=True, hidden_act="gelu_pytorch_tanh", sliding_window=32,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@pytest.fixture(scope="session")
def family_bases(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """family name -> a tiny base model directory of that family (Code Llama: tiny_base)."""
    from transformers import AutoModelForCausalLM

    out = {"codellama": tiny_base}
    for family in FAMILY_TOKENS:
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        tok = family_tokenizer(family)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(family_config(family, tok)).save_pretrained(path)
        tok.save_pretrained(path)
        out[family] = path
    return out


def unpack_tokenizer(family: str, dst: Path) -> Path:
    """The family's real tokenizer folder (tests/data, rebuilt offline by build_family_tokenizers.py or, for
    Code Llama, build_codellama_tokenizer.py) copied into dst, tokenizer.json unpacked where stored xz-compressed."""
    for f in (REPO / "tests" / "data" / f"{family}-tokenizer").iterdir():
        if f.name == "tokenizer.json.xz":
            (dst / "tokenizer.json").write_bytes(lzma.decompress(f.read_bytes()))
        else:
            shutil.copyfile(f, dst / f.name)
    return dst


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """The real tokenizer folders of Qwen2.5-Coder, DeepSeek-Coder and StarCoder2 (`unpack_tokenizer`)."""
    return {family: unpack_tokenizer(family, tmp_path_factory.mktemp(family))
            for family in ("qwen2-coder", "deepseek-coder", "starcoder2")}


# family -> (vocab_size, tie_word_embeddings) of its Hub configs: Qwen2.5-Coder's and DeepSeek-Coder's vocab_size
# is padded past the tokenizer (151936 rows for 151665 tokens, 32256 for 32022); Qwen2.5-Coder-1.5B and
# StarCoder2-3B/7B tie the output embedding to the input one
REAL_VOCAB = {"codellama": (32016, False), "qwen2-coder": (151936, True), "deepseek-coder": (32256, False),
              "starcoder2": (49152, True)}


def real_vocab_model(family: str, path: Path) -> Path:
    """A tiny model of the family's architecture (family_config; Code Llama's as tiny_base) with its real
    tokenizer and its Hub config's vocab_size and tying, fp32, saved at path: what llama.cpp needs to load a
    family's GGUF export and tokenize as the family does. Weights drawn with std 0.2 give logits of order 1.
    StarCoder2 keeps its Hub window, 4096."""
    from transformers import AutoModelForCausalLM

    unpack_tokenizer(family, path)
    tok = AutoTokenizer.from_pretrained(path)
    if family == "codellama":
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=1024,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    else:
        config = family_config(family, tok)
    config.vocab_size, config.tie_word_embeddings = REAL_VOCAB[family]
    config.initializer_range = 0.2
    if family == "starcoder2":
        config.sliding_window = 4096
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path
