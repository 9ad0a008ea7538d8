"""Bad data: each file in tests/bad_inputs/data gets a message naming file, line or row, and the fix."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from qlcode.cli import app
from qlcode.data import build
from qlcode.errors import DataError, RecipeError
from qlcode.recipe import DataSection, load_recipe

from conftest import REPO, write_jsonl

BAD = REPO / "tests" / "bad_inputs" / "data"
MBPP = REPO / "tests" / "data" / "mbpp.jsonl"

CASES = [  # file, dataset keys, data keys, the message ({path} = the file)
    ("non_utf8.jsonl", {"format": "prompt-completion"}, {},
     "{path}:2: not UTF-8 text (byte 0xe9 at column 16); save the file as UTF-8"),
    ("binary.csv", {"format": "text"}, {},
     "{path}:1: not UTF-8 text (byte 0x89 at column 1); save the file as UTF-8"),
    ("mixed_types.jsonl", {"format": "prompt-completion"}, {},
     "{path}:3: column 'completion' holds a number here but text in line 1; give the column one type in every row "
     "(quote numbers as text)"),
    ("message_content_not_text.jsonl", {"format": "messages"}, {},
     "{path}:1: column 'messages[].content' holds a number here but text in line 1; give the column one type in every row "
     "(quote numbers as text)"),
    ("garbage.csv", {"format": "prompt-completion"}, {},
     "{path}: not a valid CSV file (Expected 2 fields in line 3, saw 4); the first line names the columns and each line "
     "holds one value per column (quote values that contain commas)"),
    ("not_a_list.json", {"format": "text"}, {},
     "{path}: a .json file must hold a non-empty list of row objects ([{{...}}, {{...}}])"),
    ("not_parquet.parquet", {"format": "text"}, {},
     "{path}: not a Parquet file (Could not open Parquet input source '{path}': Parquet magic bytes not found in footer. "
     "Either the file is corrupted or this is not a parquet file.)"),
    ("kto_label_not_bool.jsonl", {"format": "kto"}, {},
     "{path} row 0: label ('label') must be true or false, got 'yes'"),
    ("conversation_votes.jsonl", {"format": "preference"}, {"template": "completion"},
     "{path} row 0: a conversational prompt needs data.template instruct or raw (the model's own chat template), "
     "not completion"),
    ("problems_without_tests.jsonl", {"format": "problems"}, {},
     "data.datasets[0]: {path} has no column 'tests' (a list of asserts) or 'test' (test code) for problems "
     "(columns: task_id, prompt, solution); map one with data.datasets[0].columns: {{tests: COLUMN}} or {{test: COLUMN}}"),
    ("deeply_nested.jsonl", {"format": "prompt-completion"}, {},
     "{path}:1: values nested too deep to read (lists or objects inside each other hundreds of levels down); "
     "a row holds text fields"),
    ("problems_test_syntax_error.jsonl", {"format": "problems"}, {},
     "{path} row 0: tests[1] ('tests') is not valid Python ('(' was never closed, line 1 of the test); fix the test"),
    ("preference_chosen_is_rejected.jsonl", {"format": "preference"}, {},
     "data.datasets[0]: in every one of the 3 preference rows of {path} (train), the chosen answer is the same as its "
     "rejected one: there is nothing to learn"),
    (MBPP, {"format": "problems", "columns": {"prompt": "text", "tests": "test_list"}}, {},
     "{path} row 0: MBPP task_id 1 is in MBPP's evaluation splits (1-600); "
     "train on its train split with data.datasets[0].source: builtin:mbpp-train:{path}"),
]


def _recipe(tmp_path, dataset: dict, **data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "builtin:micro-codellama"},
                                    "data": {"datasets": [dataset], "validation": 0, **data}}))
    return path


@pytest.mark.parametrize("name, dataset, data, message", CASES, ids=[str(c[0]).rsplit("/", 1)[-1] for c in CASES])
def test_bad_file_gets_its_message(tmp_path, name, dataset, data, message):
    path = BAD / name
    with pytest.raises(DataError) as e:  # the data section alone: the train methods kto and grpo are the lead's
        build(DataSection.model_validate({"datasets": [{"source": str(path), **dataset}], "validation": 0, **data}))
    assert str(e.value) == message.format(path=path)


def test_max_length_too_small_is_refused_in_the_recipe(tmp_path):
    path = _recipe(tmp_path, {"source": "builtin:stdlib-python-instruct", "format": "alpaca"}, max_length=1)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}:5: data.max_length: must be at least 16 tokens, got 1: one Code Llama Instruct exchange "
                            "with a one-token prompt and a one-token answer already takes 12 (Llama's tokenizer) to 14 (the micro model's)")


def test_build_writes_nothing(tmp_path, monkeypatch):
    """The pipeline runs before the run directory exists: bad data stops a run before anything is written."""
    monkeypatch.chdir(tmp_path)
    f = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(8)])
    train, held = build(load_recipe(_recipe(tmp_path, {"source": f.name, "format": "prompt-completion"},
                                            decontaminate=[f"mbpp:{MBPP}"], validation=0.25)).data)
    assert (len(train), len(held)) == (6, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "rows.jsonl"]


def test_recipes_validate_checks_the_data_one_line_per_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "bad").mkdir()
    bad = _recipe(tmp_path / "bad", {"source": str(BAD / "mixed_types.jsonl"), "format": "prompt-completion"})
    hub = _recipe(tmp_path, {"source": "someone/code-rows", "format": "alpaca"})
    res = CliRunner().invoke(app, ["recipes", "validate", str(hub), str(bad)], env={"COLUMNS": "80"})
    assert res.exit_code == 2
    lines = res.output.splitlines()
    assert lines[:2] == [f"note: data.datasets[0]: someone/code-rows is on the Hub and HF_HUB_OFFLINE is set: not checked",
                         f"ok {hub}"]
    assert lines[2] == (f"error: {BAD / 'mixed_types.jsonl'}:3: column 'completion' holds a number here but text in line 1; "
                        "give the column one type in every row (quote numbers as text)")
    res = CliRunner().invoke(app, ["recipes", "validate", "--no-data", str(bad)])
    assert res.exit_code == 0 and res.output == f"ok {bad}\n"


def test_recipes_validate_prints_each_recipe_problem_on_one_line(tmp_path):
    path = _recipe(tmp_path, {"source": "builtin:stdlib-python-instruct", "format": "alpaca"}, max_length=8, validation=1.5)
    res = CliRunner().invoke(app, ["recipes", "validate", str(path)], env={"COLUMNS": "80"})
    assert res.exit_code == 2
    assert res.output.splitlines() == [
        f"error: {path}:5: data.max_length: must be at least 16 tokens, got 8: one Code Llama Instruct exchange with a "
        "one-token prompt and a one-token answer already takes 12 (Llama's tokenizer) to 14 (the micro model's)",
        f"{path}:6: data.validation: a validation fraction must be in [0, 1), got 1.5"]


def _data(source, fmt: str = "prompt-completion", **data) -> DataSection:
    return DataSection.model_validate({"datasets": [{"source": str(source), "format": fmt}], "validation": 0, **data})


def test_a_data_path_that_is_not_a_file_says_what_it_is(tmp_path):
    import os

    folder = tmp_path / "rows.jsonl"
    folder.mkdir()
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    os.symlink(tmp_path / "loop2.jsonl", loop)
    os.symlink(loop, tmp_path / "loop2.jsonl")
    expected = {folder: "is a directory, not a data file (a directory of projects is format: repository)",
                fifo: "is not a regular file (a FIFO, socket or device): copy the rows into a file",
                loop: "is a symbolic link to nothing (its target is missing, or the link leads back to itself)"}
    for path, why in expected.items():
        with pytest.raises(DataError) as e:
            build(_data(path))
        assert str(e.value) == f"data.datasets[0].source: {str(path)!r} {why}"


def test_a_local_file_of_another_kind_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.txt").write_text("def f(): pass\n")
    path = _recipe(tmp_path, {"source": "rows.txt", "format": "text"})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}:4: data.datasets[0].source: 'rows.txt' is a local file, not a Hub dataset id: qlcode reads "
                            "local .jsonl, .json, .parquet and .csv files (and a directory of projects as format: repository)")


def test_preference_rows_whose_answers_are_equal_are_dropped_with_a_count(tmp_path, capsys):
    rows = [{"prompt": f"Return {i}.", "chosen": f"return {i}", "rejected": f"return {i}" if i % 3 == 0 else "pass"}
            for i in range(9)]
    f = write_jsonl(tmp_path / "pairs.jsonl", rows)
    train, _ = build(_data(f, "preference"))
    assert len(train) == 6 and all(r["chosen"] != r["rejected"] for r in train)
    assert (f"warning: data.datasets[0]: dropped 3 of 9 preference rows (train) whose chosen answer is the same as its "
            f"rejected one, which teach nothing (e.g. {f} row 0)") in " ".join(capsys.readouterr().err.split())


def test_validation_rows_that_are_training_rows_are_reported(tmp_path, capsys):
    f = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(8)])
    train, held = build(_data(f, validation="train"))
    assert (len(train), len(held)) == (8, 8)
    assert ("warning: 8 of 8 validation rows are training rows too (data.validation: train): the eval loss measures what "
            "was memorised, not what generalises; hold rows out with data.validation: 0.05, or name a split that training "
            "does not read") in " ".join(capsys.readouterr().err.split())
    build(_data(f, validation=0.25))
    assert "validation rows are training rows too" not in capsys.readouterr().err


def _grpo_logs(callback, shares_and_rewards, max_steps=50):
    from types import SimpleNamespace

    for step, (share, reward) in enumerate(shares_and_rewards, 1):
        callback.on_log(None, SimpleNamespace(global_step=step, max_steps=max_steps), None,
                        logs={"loss": 0.0, "reward": reward, "frac_reward_zero_std": share})


def test_grpo_groups_without_reward_spread_are_reported_after_the_first_steps(capsys):
    from qlcode.callbacks import RewardSpread

    _grpo_logs(RewardSpread(4), [(1.0, 0.0)] * 9)
    assert capsys.readouterr().err == "", "nothing before the first 10 steps"
    _grpo_logs(spread := RewardSpread(4), [(1.0, 0.0)] * 8 + [(0.5, 0.25), (0.5, 0.25)] + [(1.0, 0.0)] * 5)
    err = " ".join(capsys.readouterr().err.split())
    assert err == ("warning: GRPO, steps 1-10: in 90% of the groups of 4 completions every completion got the same reward "
                   "(mean reward 0.05); such a group teaches nothing: no completion passes its tests: check that the tests "
                   "pass on a known solution, or start from an adapter that solves some (lora.adapter) or from easier problems")
    assert spread.done
    _grpo_logs(RewardSpread(4), [(0.25, 0.5)] * 12)
    assert capsys.readouterr().err == "", "groups with reward spread: nothing to say"
