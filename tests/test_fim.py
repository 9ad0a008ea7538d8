"""Infilling: Code Llama's token layout, the split, and infilling-aware fine-tuning."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.data.fim import encode, fim_example, fim_ids, infill_prompt, split_points
from qlcode.errors import QlcodeError
from qlcode.recipe import FimSection
from qlcode.train import build_trainer, train

from conftest import make_recipe, write_jsonl
from test_train import ROWS

TOK = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
PRE, SUF, MID, EOT = 3, 4, 5, 6


def test_infilling_tokens_are_code_llamas():
    ids = fim_ids(TOK)
    assert (ids.bos, ids.pre, ids.suf, ids.mid, ids.eot) == (1, PRE, SUF, MID, EOT)
    assert TOK.convert_ids_to_tokens([PRE, SUF, MID, EOT]) == ["<PRE>", "<SUF>", "<MID>", "<EOT>"]


def test_psm_and_spm_layouts_are_exactly_code_llamas():
    ids = fim_ids(TOK)
    pre, mid, suf = "def add(a, b):\n", "    return a + b\n", "\nprint(add(1, 2))\n"
    tokens, n = fim_example(TOK, ids, pre, mid, suf, spm=False)
    assert tokens == [1, PRE, *encode(TOK, pre), SUF, *encode(TOK, suf), MID, *encode(TOK, mid), EOT]
    assert tokens[:n] == infill_prompt(TOK, ids, pre, suf) and tokens[n - 1] == MID
    tokens, n = fim_example(TOK, ids, pre, mid, suf, spm=True)
    assert tokens == [1, PRE, SUF, *encode(TOK, suf), MID, *encode(TOK, pre), *encode(TOK, mid), EOT]
    assert tokens[:n] == infill_prompt(TOK, ids, pre, suf, spm=True)
    assert TOK.decode(tokens) == f"<s><PRE><SUF>{suf}<MID>{pre}{mid}<EOT>"


@pytest.mark.parametrize("unit", ["line", "char"])
def test_split_points_cover_the_text(unit):
    text = "".join(f"line {i} = {i * i}\n" for i in range(20))
    rng = random.Random(0)
    for _ in range(50):
        p, m, s = split_points(text, rng, unit)
        assert p + m + s == text
        if unit == "line":
            assert (p == "" or p.endswith("\n")) and (m == "" or m.endswith("\n"))


def test_a_tokenizer_without_infilling_tokens_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "a": 1}, unk_token="<s>")))
    with pytest.raises(QlcodeError, match="this tokenizer has no <PRE> token: infilling needs a Code Llama-family base"):
        fim_ids(plain)


@pytest.fixture
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


@pytest.mark.parametrize("template", ["instruct", "completion"])
def test_rows_not_turned_into_infilling_are_tokenized_as_trl_does(tmp_path, tiny_base, rows_file, template):
    data = {"template": template, "validation": 0}
    plain, _ = build_trainer(make_recipe(tmp_path, tiny_base, rows_file, data=data))
    fim0, _ = build_trainer(make_recipe(tmp_path, tiny_base, rows_file, data={**data, "fim": {"rate": 0.0}}))
    assert plain.train_dataset["input_ids"] == fim0.train_dataset["input_ids"]
    assert plain.train_dataset["labels"] == fim0.train_dataset["labels"]


def test_infilling_rows_train_on_the_middle_and_eot(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file,
                         data={"validation": 0, "fim": {"rate": 1.0, "spm_rate": 0.5, "unit": "line"}})
    trainer, _ = build_trainer(recipe)
    orders = set()
    for row in trainer.train_dataset:
        tokens, labels = row["input_ids"], row["labels"]
        assert tokens[:2] == [1, PRE] and tokens[-1] == EOT
        mid = tokens.index(MID)
        orders.add("spm" if tokens[2] == SUF else "psm")
        trained = [t for t, lab in zip(tokens, labels) if lab != -100]
        if tokens[2] != SUF:
            assert trained == tokens[mid + 1 :]  # PSM: the middle and <EOT>
        else:  # SPM: after <MID> come the prefix (context) and then the trained middle and <EOT>
            assert trained == tokens[len(tokens) - len(trained) :] and len(trained) <= len(tokens) - mid - 1
        code = TOK.decode([t for t in tokens if t > EOT])
        assert "return" in code and "def f():" in code
    assert orders == {"psm", "spm"}
    assert train(make_recipe(tmp_path / "t", tiny_base, rows_file, data={"fim": {"rate": 0.5}}, train={"max_steps": 3})).steps == 3


def test_fim_is_refused_for_dpo(tmp_path, rows_file):
    import yaml

    from qlcode.errors import RecipeError
    from qlcode.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "builtin:micro-codellama"},
                                    "data": {"datasets": [{"source": str(rows_file), "format": "preference"}],
                                             "fim": {"rate": 0.5}}, "train": {"method": "dpo"}}))
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: data.fim: infilling examples train with train.method: sft, not dpo"):
        load_recipe(path)
    assert FimSection().unit == "line"
