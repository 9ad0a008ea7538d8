"""Shared fixtures: a tiny Llama built in code (with the micro model's tokenizer) and recipe helpers."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU; it must be set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import logging
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
