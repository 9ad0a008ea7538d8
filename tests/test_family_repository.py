"""Repository-level training data in each family's own layout, with the real tokenizers (tests/data):
Qwen2.5-Coder's and StarCoder2's repository tokens, the `# file:` comments of Code Llama and DeepSeek-Coder;
a tiny Qwen2 trains on it, and infilling on repository rows never cuts a repository token in two."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

from qlcode.data import build
from qlcode.data.fim import with_infilling
from qlcode.models import load_tokenizer
from qlcode.recipe import DataSection, FimSection
from qlcode.train import build_trainer

from conftest import make_recipe

UTIL = "def twice(x):\n    return 2 * x\n"
MAIN = "from util import twice\n\nprint(twice(21))\n"
REPO_TOKENS = {"qwen2-coder": ("<|repo_name|>", "<|file_sep|>"), "starcoder2": ("<repo_name>", "<file_sep>")}
REAL_IDS = {"qwen2-coder": [151663, 151664], "starcoder2": [5, 6]}  # tokenizer_config.json of each family


def two_files(tmp_path: Path) -> Path:
    """A directory of projects holding one project, proj: main.py imports util.py, so util.py comes first."""
    (tmp_path / "proj").mkdir(parents=True)
    (tmp_path / "proj" / "main.py").write_text(MAIN)
    (tmp_path / "proj" / "util.py").write_text(UTIL)
    return tmp_path


def documented(family: str, tok) -> list[int]:
    """The two-file repository's token ids as each family's documentation lays it out, special tokens by id.

    Qwen2.5-Coder (its README's repository-level example, technical report section 3.1):
        <|repo_name|>NAME\\n<|file_sep|>PATH\\nCODE\\n<|file_sep|>PATH\\nCODE\\n
    StarCoder2 (paper section 5.1): <repo_name>NAME<file_sep>PATH\\nCODE<file_sep>PATH\\nCODE
    Code Llama, DeepSeek-Coder: no repository tokens; a `# file: NAME/PATH` comment over each file.
    """
    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    if family in REPO_TOKENS:
        name, sep = tok.convert_tokens_to_ids(list(REPO_TOKENS[family]))
        end = "\n" if family == "qwen2-coder" else ""
        return [name, *enc(f"proj{end}"), sep, *enc(f"util.py\n{UTIL}{end}"), sep, *enc(f"main.py\n{MAIN}{end}")]
    return [tok.bos_token_id, *enc(f"# file: proj/util.py\n{UTIL}\n# file: proj/main.py\n{MAIN}\n")]


@pytest.fixture(scope="module")
def real_tokenizers(tokenizer_dirs, codellama_tokenizer_dir) -> dict[str, Path]:
    return {"codellama": codellama_tokenizer_dir, **tokenizer_dirs}


@pytest.mark.parametrize("family", ["codellama", "qwen2-coder", "deepseek-coder", "starcoder2"])
def test_repository_rows_take_the_familys_layout_token_for_token(family, real_tokenizers, tmp_path):
    tok = load_tokenizer(str(real_tokenizers[family]))
    data = DataSection(datasets=[{"source": str(two_files(tmp_path)), "format": "repository"}], packing=True, validation=0)
    train, _ = build(data, tok)
    ids = tok(train["text"][0])["input_ids"]  # as TRL tokenizes a text row (it appends eos after)
    assert ids == documented(family, tok)  # the repository tokens, by id: each one special token
    if family in REPO_TOKENS:
        assert tok.convert_tokens_to_ids(list(REPO_TOKENS[family])) == REAL_IDS[family]
    if family in ("codellama", "deepseek-coder"):  # plain code and comments after bos: no special token at all
        assert ids[0] == tok.bos_token_id and not set(ids[1:]) & set(tok.all_special_ids)


def test_a_tiny_qwen2_trains_on_repository_data_in_qwens_layout(family_bases, tmp_path):
    base = family_bases["qwen2-coder"]
    recipe = make_recipe(tmp_path, base, two_files(tmp_path / "repos"), fmt="repository",
                         data={"packing": True, "validation": 0, "max_length": 16}, train={"max_steps": 2})
    trainer, _ = build_trainer(recipe)
    tok = trainer.processing_class
    repo_name, file_sep = tok.convert_tokens_to_ids(["<|repo_name|>", "<|file_sep|>"])
    stream = [t for row in trainer.train_dataset for t in row["input_ids"]]
    assert all(len(row["input_ids"]) <= 16 for row in trainer.train_dataset)
    # the one repository, cut into pieces of at most 16 tokens and packed: every token of Qwen's layout kept
    assert sorted(stream) == sorted(documented("qwen2-coder", tok) + [tok.eos_token_id])
    assert stream.count(repo_name) == 1 and stream.count(file_sep) == 2
    assert trainer.train().global_step == 2


def test_infilling_on_repository_rows_keeps_the_repository_tokens_whole(tokenizer_dirs):
    """StarCoder2's <file_sep> sits inside a line, so only a cut between characters could split it."""
    tok = load_tokenizer(str(tokenizer_dirs["starcoder2"]))
    text = f"<repo_name>proj<file_sep>util.py\n{UTIL}<file_sep>main.py\n{MAIN}"
    rows = Dataset.from_list([{"text": text, "_code": text}] * 200)
    out = with_infilling(rows, tok, FimSection(rate=1.0, spm_rate=0.5, unit="char"), seed=0)
    fim_prefix = tok.convert_tokens_to_ids("<fim_prefix>")
    assert all(ids.count(fim_prefix) == 1 for ids in out["input_ids"])  # every row an infilling example
    name, sep = REAL_IDS["starcoder2"]
    assert all(ids.count(name) == 1 and ids.count(sep) == 2 for ids in out["input_ids"])
