"""Formats: one class each, in step with the recipe; problems, kto and conversational preference rows."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from typer.testing import CliRunner

from qlcode.cli import app
from qlcode.data import build, check_sample, render
from qlcode.data.formats import FORMATS
from qlcode.methods import format_problem
from qlcode.data.formats.kto import unpaired
from qlcode.errors import DataError
from qlcode.execution.generate import INSTRUCT_ASK
from qlcode.recipe import DataSection, Format

from conftest import REPO, write_jsonl

MBPP = REPO / "tests" / "data" / "mbpp.jsonl"
CONVERSATION = [{"role": "user", "content": "Add one to x."}]

SAMPLES = {  # a canonical row of each format, and the columns it renders to under each template
    "alpaca": ({"instruction": "Add one.", "input": "", "output": "x + 1"},
               {"instruct": {"messages"}, "completion": {"prompt", "completion"}, "raw": {"prompt", "completion"}}),
    "prompt-completion": ({"prompt": "p", "completion": "c"},
                          {"instruct": {"messages"}, "completion": {"prompt", "completion"}, "raw": {"prompt", "completion"}}),
    "messages": ({"messages": CONVERSATION + [{"role": "assistant", "content": "x + 1"}]},
                 {"instruct": {"messages"}, "raw": {"messages"}}),
    "sharegpt": ({"messages": CONVERSATION + [{"role": "assistant", "content": "x + 1"}]},
                 {"instruct": {"messages"}, "raw": {"messages"}}),
    "openai": ({"messages": CONVERSATION + [{"role": "assistant", "content": "x + 1"}]},
               {"instruct": {"messages"}, "raw": {"messages"}}),
    "text": ({"text": "x = 1\n"}, {t: {"text"} for t in ("instruct", "completion", "raw")}),
    "repository": ({"text": "# file: a.py\nx = 1\n"}, {t: {"text"} for t in ("instruct", "completion", "raw")}),
    "preference": ({"prompt": "p", "chosen": "c", "rejected": "r"},
                   {t: {"prompt", "chosen", "rejected"} for t in ("instruct", "completion", "raw")}),
    "kto": ({"prompt": "p", "completion": "c", "label": False},
            {t: {"prompt", "completion", "label"} for t in ("instruct", "completion", "raw")}),
    "problems": ({"prompt": "def f():\n", "test": "assert f() == 1", "entry_point": "f", "task_id": "t/1"},
                 {t: {"prompt", "test", "hidden_test", "entry_point", "task_id"} for t in ("instruct", "completion", "raw")}),
}


def test_registry_is_the_recipes_format_list():
    assert sorted(FORMATS) == sorted(get_args(Format)) == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_renders_to_its_row_kind(name):
    row, columns = SAMPLES[name]
    fmt = FORMATS[name]
    for template in ("instruct", "completion", "raw"):
        if template not in columns:
            assert fmt.template_problem(template) is not None
            continue
        assert set(render(row, name, template)) == columns[template], template
        assert fmt.kind(template)


def test_a_column_mapped_onto_no_field_lists_the_fields(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"q": "p", "test": "assert True"}])
    with pytest.raises(DataError) as e:
        build(_data([{"source": str(f), "format": "problems", "columns": {"question": "q"}}]))
    assert str(e.value) == ("data.datasets[0].columns: question is not a field of problems rows (fields: prompt, tests "
                            "(a list of asserts) or test (test code), entry_point, task_id and hidden_tests (optional))")


def test_method_problems_name_the_fitting_formats():
    assert format_problem("alpaca", "dpo") == "train.method dpo needs preference data (chosen/rejected), got alpaca (it trains with train.method: sft)"
    assert format_problem("preference", "dpo") is None and format_problem("problems", "grpo") is None
    assert format_problem("problems", "sft") == ("train.method sft needs alpaca, messages, openai, prompt-completion, repository, sharegpt or "
                                                 "text data, got problems (it trains with train.method: grpo)")


def _data(datasets, **keys) -> DataSection:
    return DataSection.model_validate({"datasets": datasets, "validation": 0, **keys})


def test_mbpp_train_split_becomes_problems_with_their_tests():
    train, _ = build(_data([{"source": f"builtin:mbpp-train:{MBPP}", "format": "problems"}]))
    assert len(train) == 974 - 601 + 1
    assert {int(t.split("/")[1]) for t in train["task_id"]} == set(range(601, 975))
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in MBPP.read_text().splitlines()}
    row = next(r for r in train if r["task_id"] == "MBPP/601")
    assert row["prompt"] == [{"role": "user", "content": f'{INSTRUCT_ASK}"""\n{rows[601]["text"]}\n{rows[601]["test_list"][0]}\n"""\n'}]
    assert all(t in row["test"] for t in rows[601]["test_list"])
    with pytest.raises(DataError, match=r"builtin:mbpp-train is MBPP's train split alone \(task_id 601-974\), not 'test'"):
        build(_data([{"source": f"builtin:mbpp-train:{MBPP}", "format": "problems"}], validation="test"))


def test_humaneval_and_pairs_style_problem_files(tmp_path):
    he = write_jsonl(tmp_path / "he.jsonl", [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
                                             "canonical_solution": "    return a + b\n",
                                             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"task_id": "p/0", "prompt": "Write inc(x).", "test": "assert inc(1) == 2"}])
    train, _ = build(_data([{"source": str(he), "format": "problems"}, {"source": str(pairs), "format": "problems"}],
                           template="completion"))
    by_id = {r["task_id"]: r for r in train}
    assert by_id["HumanEval/0"] == {"prompt": "def add(a, b):\n", "entry_point": "add", "task_id": "HumanEval/0",
                                    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)", "hidden_test": ""}
    assert by_id["p/0"] == {"prompt": "Write inc(x).", "test": "assert inc(1) == 2", "entry_point": "", "task_id": "p/0",
                            "hidden_test": ""}


def test_problems_are_decontaminated_on_their_prompt(tmp_path):
    row = json.loads(MBPP.read_text().splitlines()[20])  # a test-split problem
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Write a function that returns one.", "test": row["code"]},  # benchmark code in the test: kept
        {"prompt": row["code"], "test": "assert True"}])  # the benchmark's code as a prompt: dropped
    train, _ = build(_data([{"source": str(f), "format": "problems"}], template="raw", decontaminate=[f"mbpp:{MBPP}"]))
    assert train["prompt"] == ["Write a function that returns one."]


def test_kto_rows_and_preference_rows_unpaired(tmp_path):
    f = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Add one.", "completion": "x + 1", "label": True},
                                             {"prompt": "Add two.", "completion": "x + 3", "label": False}])
    train, _ = build(_data([{"source": str(f), "format": "kto"}]))
    assert sorted(train, key=lambda r: r["label"]) == [
        {"prompt": [{"role": "user", "content": "Add two."}], "completion": [{"role": "assistant", "content": "x + 3"}], "label": False},
        {"prompt": [{"role": "user", "content": "Add one."}], "completion": [{"role": "assistant", "content": "x + 1"}], "label": True}]
    pref = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    pairs, _ = build(_data([{"source": str(pref), "format": "preference"}], template="raw"))
    assert list(unpaired(pairs)) == [{"prompt": "p", "completion": "good", "label": True},
                                     {"prompt": "p", "completion": "bad", "label": False}]
    with pytest.raises(DataError, match="only preference rows .* can be unpaired for KTO; these lack chosen, rejected"):
        unpaired(train)


def test_conversational_preference_rows_as_the_playground_stores_votes(tmp_path):
    history = [{"role": "user", "content": "Write inc(x)."}, {"role": "assistant", "content": "def inc(x): return x + 1"},
               {"role": "user", "content": "Now dec(x)."}]
    messages = write_jsonl(tmp_path / "votes.jsonl", [
        {"prompt": history, "chosen": {"role": "assistant", "content": "def dec(x): return x - 1"},
         "rejected": {"role": "assistant", "content": "def dec(x): return x + 1"}, "chosen_model": "a", "rejected_model": "b"}])
    texts = write_jsonl(tmp_path / "texts.jsonl", [
        {"prompt": CONVERSATION, "chosen": "x + 1", "rejected": "x - 1", "chosen_model": "b", "rejected_model": "a"}])
    lists = write_jsonl(tmp_path / "lists.jsonl", [
        {"prompt": CONVERSATION, "chosen": [{"role": "assistant", "content": "x + 1"}],
         "rejected": [{"role": "assistant", "content": "x - 1"}]}])
    sources = [{"source": str(f), "format": "preference"} for f in (messages, texts, lists)]
    for template in ("instruct", "raw"):
        train, _ = build(_data(sources, template=template))
        assert len(train) == 3 and train.filter(lambda p: p == CONVERSATION, input_columns="prompt")["chosen"] == [
            [{"role": "assistant", "content": "x + 1"}]] * 2
        first = next(r for r in train if r["prompt"] == history)
        assert first["chosen"] == [{"role": "assistant", "content": "def dec(x): return x - 1"}]
        assert first["rejected"] == [{"role": "assistant", "content": "def dec(x): return x + 1"}]
        assert set(train.column_names) == {"prompt", "chosen", "rejected"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": history[:2], "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 0: prompt \('prompt'\) must end with the user's turn, got assistant"):
        build(_data([{"source": str(bad), "format": "preference"}]))


def test_infilling_uses_each_formats_code(tmp_path):
    from transformers import AutoTokenizer

    from qlcode.builtin import MODELS

    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Return {i}.", "output": f"def f():\n    return {i}\n"} for i in range(6)])
    data = _data([{"source": str(f), "format": "alpaca"}], fim={"rate": 1.0, "spm_rate": 0.0})
    train, _ = build(data, tok)
    assert train.column_names == ["input_ids", "completion_mask"]
    for row in train:
        assert row["input_ids"][:2] == [1, 3] and row["input_ids"][-1] == 6  # <s> <PRE> ... <EOT>
        assert "Return" not in tok.decode(row["input_ids"])  # the code alone, not the instruction
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build(data)


def test_data_check_reports_the_rows_training_uses(tmp_path):
    from qlcode.execution.benchmarks import humaneval

    he = humaneval()[3]
    rows = [{"instruction": f"Return {i}.", "output": f"return {i}"} for i in range(30)]
    rows[17] = {"instruction": "Solve it.", "output": he.prompt + he.reference}
    f = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{base: builtin:micro-codellama}}\ndata:\n  datasets: [{{source: {f}, format: alpaca, max_rows: 29}}]\n"
                      "  validation: 0.25\n  seed: 3\n")
    from qlcode.recipe import load_recipe

    train, held = build(load_recipe(recipe).data)
    res = CliRunner().invoke(app, ["data", "check", str(recipe), "--against", "humaneval"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    in_train = any(r["messages"][1]["content"].startswith(he.prompt) for r in train)
    assert f"│ train │ {len(train)} │ {int(in_train)} │" in out and f"│ validation │ {len(held)} │ {int(not in_train)} │" in out
    assert f"17: {he.task_id}" in out  # the row of the file, whatever max_rows' sample and the split did


def test_check_sample_reads_only_the_first_rows(tmp_path):
    rows = [{"text": f"x = {i}"} for i in range(150)] + [{"text": ""}]
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    data = _data([{"source": str(f), "format": "text"}])
    assert check_sample(data) == []
    with pytest.raises(DataError, match=r"row 150: text \('text'\) must be non-empty text"):
        build(data)


def test_datasets_of_different_row_kinds_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"prompt": CONVERSATION, "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError) as e:
        build(_data([{"source": str(a), "format": "prompt-completion"}, {"source": str(b), "format": "preference"}]))
    assert str(e.value) == ("data.datasets render to different row kinds for training (data.datasets[0]: conversation (messages), "
                            "messages (conversation); data.datasets[1]: preference (prompt, chosen, rejected), "
                            "chosen (conversation), prompt (conversation), rejected (conversation)); "
                            "give every dataset the same kind (see README: Formats)")
    with pytest.raises(DataError, match=r"rejected\), chosen, prompt, rejected; data.datasets\[1\]: .*, chosen \(conversation\), prompt \(conversation\), "):
        build(_data([{"source": str(b), "format": "preference"}, {"source": str(c), "format": "preference"}], template="raw"))


def test_mbpp_from_the_hub_is_not_checked_offline(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    data = _data([{"source": "builtin:mbpp-train", "format": "problems"}, {"source": f"builtin:mbpp-train:{MBPP}", "format": "problems"}])
    assert check_sample(data) == ["data.datasets[0]: builtin:mbpp-train is on the Hub and HF_HUB_OFFLINE is set: not checked"]


def test_hub_datasets_are_noted_when_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    [note] = check_sample(_data([{"source": "someone/code-rows", "format": "alpaca"}]))
    assert note.startswith("data.datasets[0]: someone/code-rows: the Hub cannot be reached (") and note.endswith("): not checked")


def test_min_length_holds_one_short_exchange():
    """The bound data.max_length >= 16 against the micro model's tokenizer (Llama's takes 12, see recipe.MIN_LENGTH)."""
    from transformers import AutoTokenizer

    from qlcode.builtin import MODELS
    from qlcode.families.codellama import CHAT_TEMPLATE as CODELLAMA_INSTRUCT_CHAT_TEMPLATE
    from qlcode.recipe import MIN_LENGTH

    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    ids = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                  chat_template=CODELLAMA_INSTRUCT_CHAT_TEMPLATE, tokenize=True, return_dict=True)["input_ids"]
    assert len(ids) == 14 < MIN_LENGTH
