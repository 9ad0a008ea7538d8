"""Recipes: shipped ones validate, broken ones give their exact message, overrides are typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qlcode.errors import RecipeError
from qlcode.recipe import Recipe, load_recipe

from conftest import REPO

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def test_there_are_shipped_recipes():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "python-sft", "instruct-sft", "python-dpo", "34b-24gb"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates_and_says_what_it_needs(path: Path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    header = path.read_text().splitlines()[:6]
    assert header[0].startswith(f"# {path.stem}:")
    assert any("GPU" in line or "CPU" in line for line in header), "the header says what hardware it needs"


BASE = """\
model:
  base: builtin:micro-codellama
data:
  datasets:
    - source: builtin:stdlib-python-instruct
      format: alpaca
"""

BROKEN = [
    # (recipe text, expected message with {path})
    (BASE + "lora:\n  rank: 8\n", "{path}:8: lora.rank: unknown key (did you mean lora.r?)"),
    (BASE + "train:\n  learning_rat: 1e-4\n", "{path}:8: train.learning_rat: unknown key (did you mean train.learning_rate?)"),
    (BASE + "train:\n  max_steps: ten\n",
     "{path}:8: train.max_steps: input should be a valid integer, unable to parse string as an integer (got 'ten')"),
    (BASE.replace("format: alpaca", "format: alpacca"),
     "{path}:6: data.datasets[0].format: input should be 'alpaca', 'prompt-completion', 'messages', 'sharegpt', 'openai', 'text', 'preference', 'repository', 'kto' or 'problems' (got 'alpacca')"),
    (BASE + "quant:\n  bits: 3\n", "{path}:8: quant.bits: input should be 4, 8 or None (got 3)"),
    ("data:\n  datasets:\n    - source: builtin:stdlib-python-instruct\n      format: alpaca\n",
     "{path}:1: model: required key is missing"),
    (BASE.replace("builtin:micro-codellama", "./no/such/model"),
     "{path}:2: model.base: no such model directory './no/such/model'"),
    (BASE + "train:\n  method: dpo\n",
     "{path}:6: data.datasets[0].format: train.method dpo needs preference data (chosen/rejected), got alpaca (it trains with train.method: sft)"),
    (BASE + "hub:\n  push: true\n", "{path}:8: hub.push: pushing needs hub.repo_id (user/name)"),
    (BASE + "hub:\n  repo_id: no-slash\n", "{path}:8: hub.repo_id: a Hub repo id has the form user/name, got 'no-slash'"),
    (BASE + "modle:\n  base: x\n", "{path}:7: modle: unknown key (did you mean model?)"),
    (BASE + "data:\n  template: raw\n", "{path}:7: data: duplicate key (first at line 3); YAML would silently keep only the last"),
    ("model: [1, 2\n", "{path}:2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
]


@pytest.mark.parametrize("text,expected", BROKEN, ids=range(len(BROKEN)))
def test_broken_recipe_gives_exact_message(tmp_path, text, expected):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == expected.format(path=path)


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match=r"^nope.yaml: no such recipe file"):
        load_recipe("nope.yaml")


def test_overrides_are_typed_by_the_schema_and_named_in_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    r = load_recipe(path, ["train.max_steps=20", "lora.r=4", "lora.target_modules=[q_proj,v_proj]",
                           "quant.bits=none", "data.datasets.0.max_rows=10", "train.learning_rate=3e-4"])
    assert r.train.max_steps == 20 and r.lora.r == 4 and r.quant.bits is None
    assert r.lora.target_modules == ["q_proj", "v_proj"]
    assert r.data.datasets[0].max_rows == 10 and r.train.learning_rate == pytest.approx(3e-4)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["lora.rank=16"])
    assert str(e.value) == "command line (lora.rank=16): lora.rank: unknown key (did you mean lora.r?)"
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["train.max_steps"])
    assert "an override has the form key.path=value" in str(e.value)


def test_resolved_recipe_round_trips_with_every_default(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(BASE)
    r = load_recipe(path)
    dumped = yaml.safe_load(r.to_yaml())
    assert dumped["output"]["name"] == "mini"
    assert dumped["quant"] == {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "auto", "storage_dtype": "uint8",
                              "kernels": "auto", "fused_blocks": True}
    again = tmp_path / "again.yaml"
    again.write_text(r.to_yaml())
    assert load_recipe(again) == r


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlcode.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_reports_a_bad_recipe_with_exit_2_and_no_traceback(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(BASE + "lora:\n  rank: 8\n")
    for verb in (["train"], ["recipes", "validate"], ["recipes", "show"]):
        res = run_cli(*verb, str(path))
        assert res.returncode == 2, res.stderr
        assert f"{path}:8: lora.rank: unknown key (did you mean lora.r?)" in " ".join(res.stderr.split())
        assert "Traceback" not in res.stderr


def test_cli_show_prints_the_resolved_recipe_and_version():
    res = run_cli("recipes", "show", "recipes/quickstart.yaml", "train.max_steps=7")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["train"]["max_steps"] == 7 and shown["train"]["sft"] == {"neftune_noise_alpha": None} and shown["train"]["dpo"] is None
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("qlcode ")
    for verb in (["train"], ["recipes", "validate"], ["recipes", "show"], []):
        assert run_cli(*verb, "--help").returncode == 0
