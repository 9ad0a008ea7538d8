"""Data: sources, formats, column mapping, templates, and the messages bad rows get."""

from __future__ import annotations

import json

import pytest
import yaml

from qlcode.data import build, render
from qlcode.errors import DataError
from qlcode.recipe import load_recipe

from conftest import write_jsonl


def _data(tmp_path, datasets, **data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "builtin:micro-codellama"},
                                    "data": {"datasets": datasets, **data}}))
    return load_recipe(path).data


def test_builtin_dataset_has_a_fixed_held_out_split(tmp_path):
    data = _data(tmp_path, [{"source": "builtin:stdlib-python-instruct", "format": "alpaca"}], validation="test")
    train, held = build(data)
    assert len(train) > 800 and len(held) >= 50
    user = lambda r: r["messages"][0]["content"]
    assert not {user(r) for r in train} & {user(r) for r in held}
    row = held[0]["messages"]
    assert row[0]["role"] == "user" and row[0]["content"].startswith("Write a Python function `")
    assert row[1]["role"] == "assistant" and row[1]["content"].lstrip().startswith(("def ", "@"))


def test_held_out_split_is_exactly_the_held_out_modules():
    import gzip

    from qlcode.builtin import DATASETS, HELD_OUT_MODULES

    with gzip.open(DATASETS["stdlib-python-instruct"], "rt") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        assert (r["split"] == "test") == (r["module"].split(".")[0] in HELD_OUT_MODULES), r["module"]
    assert len({r["output"] for r in rows}) == len(rows), "rows are deduplicated on their code"


def test_templates_render_each_format():
    alpaca = {"instruction": "Add two numbers.", "input": "a=1", "output": "def add(a, b):\n    return a + b\n"}
    assert render(alpaca, "alpaca", "instruct") == {"messages": [
        {"role": "user", "content": "Add two numbers.\n\na=1"}, {"role": "assistant", "content": alpaca["output"]}]}
    assert render(alpaca, "alpaca", "completion") == {"prompt": "# Add two numbers.\n#\n# a=1\n", "completion": alpaca["output"]}
    assert render(alpaca, "alpaca", "raw") == {"prompt": "Add two numbers.\n\na=1\n", "completion": alpaca["output"]}
    pref = {"prompt": "p", "chosen": "c", "rejected": "r"}
    assert render(pref, "preference", "instruct") == {
        "prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": "r"}]}
    assert render(pref, "preference", "completion") == pref
    assert render({"text": "x = 1\n"}, "text", "instruct") == {"text": "x = 1\n"}


def test_column_mapping_and_max_rows(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    f = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = _data(tmp_path, [{"source": str(f), "format": "prompt-completion", "max_rows": 10,
                             "columns": {"prompt": "question", "completion": "answer"}}],
                 template="completion", validation=0.2)
    train, held = build(data)
    assert len(train) == 8 and len(held) == 2
    assert all(r["prompt"][1:] == r["completion"][1:] for r in train)


def test_missing_column_names_the_fix(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 4)
    data = _data(tmp_path, [{"source": str(f), "format": "alpaca"}])
    with pytest.raises(DataError) as e:
        build(data)
    assert str(e.value) == (f"data.datasets[0]: {f} has no column 'instruction' for alpaca field 'instruction' "
                            "(columns: question, answer); map one with data.datasets[0].columns: {instruction: COLUMN}")


def test_bad_rows_name_file_and_row(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"^{f}:2: not valid JSON"):
        build(_data(tmp_path, [{"source": str(f), "format": "prompt-completion"}], template="completion"))
    f = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": ""}])
    with pytest.raises(DataError) as e:
        build(_data(tmp_path, [{"source": str(f), "format": "prompt-completion"}], template="completion", validation=0))
    assert str(e.value) == f"{f} row 1: completion ('completion') must be non-empty text, got ''"
    f = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="row 0: a conversation needs at least one assistant message"):
        build(_data(tmp_path, [{"source": str(f), "format": "messages"}], validation=0))


def test_missing_local_file_is_named_with_its_key(tmp_path):
    with pytest.raises(DataError) as e:
        build(_data(tmp_path, [{"source": "missing/rows.jsonl", "format": "text"}]))
    assert str(e.value) == "data.datasets[0].source: no such file 'missing/rows.jsonl' (paths are relative to the current directory)"


def test_local_file_has_one_split(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "x = 1"}] * 4)
    with pytest.raises(DataError, match=r"a local file holds one split \(train\), not 'test'"):
        build(_data(tmp_path, [{"source": str(f), "format": "text"}], validation="test"))


def test_other_local_formats_load(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"text": [f"x = {i}\n" for i in range(8)]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text(json.dumps(df.to_dict("records")))
    for name in ("t.csv", "t.parquet", "t.json"):
        train, _ = build(_data(tmp_path, [{"source": str(tmp_path / name), "format": "text"}], validation=0))
        assert sorted(train["text"]) == sorted(df["text"])
