"""Shipped recipes whose data a command makes: validate says the file is not made yet and how to make
it; training names the same command instead of a bare "no such file"."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qlcode.cli import app
from qlcode.data import build
from qlcode.errors import DataError
from qlcode.recipe import load_recipe

from conftest import REPO, write_jsonl

MADE = ["quickstart-kto", "quickstart-orpo", "python-dpo-exec"]


def _command_in_header(name: str) -> str:
    """The `qlcode pairs ...` line of the recipe's header comment, which the recipe's made_by must equal."""
    header = (REPO / "recipes" / f"{name}.yaml").read_text()
    return next(line.strip(" #") for line in header.splitlines() if line.lstrip("# ").startswith("qlcode pairs"))


def test_validate_on_a_fresh_clone_notes_the_command_that_makes_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here, as in a fresh clone
    res = CliRunner().invoke(app, ["recipes", "validate", *(str(REPO / "recipes" / f"{n}.yaml") for n in MADE)],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    for name in MADE:
        source = load_recipe(REPO / "recipes" / f"{name}.yaml").data.datasets[0].source
        assert f"note: data.datasets[0]: {source} is not made yet; make it with: {_command_in_header(name)}" in res.output
        assert f"ok {REPO / 'recipes' / name}.yaml" in res.output


def test_training_without_the_file_names_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(REPO / "recipes" / "quickstart-kto.yaml")
    with pytest.raises(DataError) as e:
        build(recipe.data)
    assert str(e.value) == ("data.datasets[0].source: no such file 'data/quickstart-kto.jsonl' (paths are relative to the "
                            f"current directory); make it first with: {_command_in_header('quickstart-kto')}")


def test_once_made_the_file_is_checked_like_any_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "quickstart-kto.jsonl", [{"prompt": "p", "completion": "c", "label": "yes"}])
    res = CliRunner().invoke(app, ["recipes", "validate", str(REPO / "recipes" / "quickstart-kto.yaml")], env={"COLUMNS": "400"})
    assert res.exit_code == 2
    assert "data/quickstart-kto.jsonl row 0: label ('label') must be true or false, got 'yes'" in res.output

