"""MLflow as a tracker: a real local store holds the run's recipe, the trainer's arguments, every
logged metric and the adapter; without mlflow installed the recipe key is refused with the fix."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qlcode.errors import RecipeError
from qlcode.tracking import flat_params

from conftest import make_recipe

mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'qlcode[mlflow]'")


def test_a_run_lands_in_a_local_mlflow_store(tmp_path, tiny_base, alpaca_file, monkeypatch):
    from mlflow import MlflowClient

    from qlcode.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, train={"report_to": "mlflow", "max_steps": 3, "save_steps": 3})
    train(recipe)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")  # the store as a user's mlflow ui reads it
    [run] = client.search_runs([client.get_experiment_by_name("qlcode").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["recipe.lora.r"] == "8" and params["recipe.model.base"] == str(tiny_base)
    assert params["recipe.data.datasets.0.source"] == str(alpaca_file)
    assert float(params["learning_rate"]) == 5e-3  # the trainer's own arguments, from transformers' MLflowCallback
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses)  # every loss metrics.jsonl has, at the same steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/recipe.yaml"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "adapter/adapter_model.safetensors", str(tmp_path / "down"))
    assert Path(local).read_bytes() == (tmp_path / "run" / "adapter_model.safetensors").read_bytes()


def test_a_failed_run_is_marked_failed(tmp_path, tiny_base, alpaca_file, monkeypatch):
    from mlflow import MlflowClient

    from qlcode.tracking import tracked

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, train={"report_to": "mlflow"})
    with pytest.raises(KeyboardInterrupt), tracked(recipe):
        raise KeyboardInterrupt
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("qlcode").experiment_id])
    assert run.info.status == "FAILED"


def test_without_mlflow_the_key_is_a_recipe_error_with_the_install(tmp_path, tiny_base, alpaca_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: train.report_to: mlflow is not installed on this machine: "
                                          r"pip install 'qlcode\[mlflow\]', or set train.report_to: none$"):
        make_recipe(tmp_path, tiny_base, alpaca_file, train={"report_to": "mlflow"})


def test_recipe_params_are_dotted_keys():
    assert flat_params({"lora": {"r": 8, "target_modules": ["q_proj"]}, "data": {"datasets": [{"source": "a.jsonl"}]}}) == {
        "lora.r": "8", "lora.target_modules": "['q_proj']", "data.datasets.0.source": "a.jsonl"}
