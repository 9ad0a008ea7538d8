"""The main job end to end, as a newcomer runs it, and the docs that describe it."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from peft import PeftModel

from qlcode.models import load_recipe_base, load_tokenizer
from qlcode.recipe import load_recipe, reference_markdown

from conftest import REPO

SETUP = "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e \".[dev]\""
TEST_COMMAND = f"{SETUP} && .venv/bin/python -m pytest"
MAIN_COMMAND = f"{SETUP} && .venv/bin/qlcode train recipes/quickstart.yaml"


def test_quickstart_trains_an_adapter_that_beats_the_base(tmp_path):
    run = tmp_path / "quickstart"
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "train", "recipes/quickstart.yaml", f"output.dir={run}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 60
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    out = " ".join(res.stdout.split())
    assert f"eval loss before │ {summary['eval_loss_before']:.4f}" in out
    assert f"eval loss after │ {summary['eval_loss_after']:.4f}" in out
    assert "train ━" in res.stderr and "tok/s" in res.stderr  # the progress bar

    recipe = load_recipe(run / "recipe.yaml")
    model = PeftModel.from_pretrained(load_recipe_base(recipe), str(run)).eval()
    tok = load_tokenizer(recipe.model.base, template=recipe.data.template)
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a Python function `f(x)`."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1] and torch.isfinite(model(input_ids=out).logits).all()


def test_readme_names_the_two_commands_and_every_recipe_key():
    readme = (REPO / "README.md").read_text()
    assert MAIN_COMMAND in readme and TEST_COMMAND in readme
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()
    assert reference_markdown() in readme, "README's key reference is stale: paste `qlcode recipes keys` into it"
