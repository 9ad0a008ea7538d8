"""The real vocabularies of Qwen2.5-Coder, DeepSeek-Coder and StarCoder2 (tests/data/*-tokenizer, rebuilt
offline from llama.cpp's vocab files by build_family_tokenizers.py): each family's infilling prompt
token for token against the layout its own documentation gives, its chat template's rendering and
loss mask on real rows, bos/eos/pad, and llama.cpp's expected tokenizations of the vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qlcode.builtin import DATASETS
from qlcode.data.fim import fim_ids, infill_prompt
from qlcode.data.pipeline import render
from qlcode.families import FAMILIES, family_of_tokenizer
from qlcode.families import deepseek_coder, qwen2_coder, starcoder2
from qlcode.models import load_tokenizer

DATA = Path(__file__).resolve().parent / "data"
GGUF = {"qwen2-coder": "ggml-vocab-qwen2.gguf", "deepseek-coder": "ggml-vocab-deepseek-coder.gguf",
        "starcoder2": "ggml-vocab-starcoder.gguf"}
PREFIX, SUFFIX = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"


@pytest.fixture(scope="session")
def real_row() -> dict:
    """A real alpaca row of builtin:stdlib-python-instruct."""
    with gzip.open(DATASETS["stdlib-python-instruct"], "rt") as f:
        row = json.loads(f.readline())
    return {"instruction": row["instruction"], "input": row.get("input", ""), "output": row["output"]}


@pytest.mark.parametrize("family", GGUF)
def test_the_vocabulary_tokenizes_as_llama_cpp_expects(family, tokenizer_dirs):
    d = tokenizer_dirs[family]
    tok = load_tokenizer(str(d))
    texts = (d / f"{GGUF[family]}.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(t) for t in line.split()] for line in (d / f"{GGUF[family]}.out").read_text().splitlines()]
    assert len(texts) == len(expected) == 46
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in texts] == expected
    assert family_of_tokenizer(tok).name == family


def test_qwen_tokens_padding_and_infilling_are_qwen_coders(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs["qwen2-coder"]))
    assert len(tok) == 151665 and tok.bos_token is None and tok.unk_token is None  # no unk to pad with
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643, "<|endoftext|>", 151643)
    ids = fim_ids(tok)
    assert (ids.bos, ids.pre, ids.suf, ids.mid, ids.eot) == (None, 151659, 151661, 151660, 151643)
    # the Qwen2.5-Coder README's fill-in-the-middle prompt, as a string the tokenizer encodes
    documented = tok(f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>")["input_ids"]
    assert infill_prompt(tok, ids, PREFIX, SUFFIX) == documented and documented[0] == 151659 and documented[-1] == 151660
    repo = qwen2_coder.FAMILY.infilling.repository("qlcode", [("a.py", "x = 1"), ("b.py", "y = 2")])
    assert repo == "<|repo_name|>qlcode\n<|file_sep|>a.py\nx = 1\n<|file_sep|>b.py\ny = 2\n"
    assert tok(repo)["input_ids"].count(151664) == 2 and tok(repo)["input_ids"][0] == 151663


def test_deepseek_tokens_padding_and_infilling_are_deepseek_coders(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs["deepseek-coder"]))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == (32013, 32014, "<pad>", 32018)
    assert tok("x")["input_ids"][0] == 32013  # bos on every text, as DeepSeek-Coder's tokenizer adds it
    ids = fim_ids(tok)
    assert (ids.bos, ids.pre, ids.suf, ids.mid, ids.eot) == (32013, 32016, 32015, 32017, 32014)
    # the DeepSeek-Coder README's code insertion example's layout, tokenized with its bos
    documented = tok(f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>")["input_ids"]
    assert infill_prompt(tok, ids, PREFIX, SUFFIX) == documented and documented[:2] == [32013, 32016]
    assert deepseek_coder.FAMILY.infilling.repo_name is None


def test_starcoder2_tokens_padding_and_infilling_are_starcoder2s(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs["starcoder2"]))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == (0, 0, "<fim_pad>", 4)
    assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]  # no bos added
    ids = fim_ids(tok)
    assert (ids.bos, ids.pre, ids.suf, ids.mid, ids.eot) == (None, 1, 3, 2, 0)
    psm = tok(f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>")["input_ids"]
    spm = tok(f"<fim_prefix><fim_suffix>{SUFFIX}<fim_middle>{PREFIX}")["input_ids"]
    assert infill_prompt(tok, ids, PREFIX, SUFFIX) == psm and infill_prompt(tok, ids, PREFIX, SUFFIX, spm=True) == spm
    repo = starcoder2.FAMILY.infilling.repository("qlcode", [("a.py", "x = 1"), ("b.py", "y = 2")])
    assert repo == "<repo_name>qlcode<file_sep>a.py\nx = 1<file_sep>b.py\ny = 2"
    assert tok(repo)["input_ids"][0] == 5 and tok(repo)["input_ids"].count(6) == 2


CHATS = {  # family -> (the rendering of one exchange, the text that carries loss, the Instruct eos)
    "qwen2-coder": ("<|im_start|>system\n" + qwen2_coder.SYSTEM + "<|im_end|>\n<|im_start|>user\n{u}<|im_end|>\n"
                    "<|im_start|>assistant\n{a}<|im_end|>\n", "{a}<|im_end|>", "<|im_end|>"),
    "deepseek-coder": ("<｜begin▁of▁sentence｜>" + deepseek_coder.SYSTEM.replace("\\n", "\n")
                       + "### Instruction:\n{u}\n### Response:\n{a}\n<|EOT|>\n", "{a}\n<|EOT|>", "<|EOT|>"),
    "starcoder2": ("<|endoftext|>" + starcoder2.SYSTEM.replace("\\n", "\n") + "### Instruction\n{u}\n\n### Response\n"
                   "{a}<|endoftext|>\n\n", "{a}<|endoftext|>", "<|endoftext|>"),
}


@pytest.mark.parametrize("family", GGUF)
def test_the_instruct_template_renders_the_familys_format_and_trains_on_the_answer(family, tokenizer_dirs, real_row):
    tok = load_tokenizer(str(tokenizer_dirs[family]), template="instruct")
    rendering, trained, eos = CHATS[family]
    assert tok.chat_template == FAMILIES[family].chat_template and tok.eos_token == eos
    messages = render(real_row, "alpaca", "instruct")["messages"]
    user, answer = messages[0]["content"], messages[1]["content"]
    assert tok.apply_chat_template(messages, tokenize=False) == rendering.format(u=user, a=answer)
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == trained.format(a=answer) and kept[-1] == tok.convert_tokens_to_ids(eos)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert rendering.format(u=user, a=answer).startswith(prompt)  # generation continues exactly where training's answer starts
