"""KTO and ORPO train the micro model on tiny data from a recipe and leave an adapter that loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from qlcode.runs import read_jsonl
from qlcode.train import train

from conftest import make_recipe, write_jsonl

PREFERENCE = [{"prompt": f"def f{i}():\n    return", "chosen": f" {i}\n", "rejected": " None\n"} for i in range(8)]


class Logs(TrainerCallback):
    """Every log event of the trainer, with the method's own metrics that metrics.jsonl leaves out."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.rows.append(dict(logs or {}))


def trained(tmp_path, method: str, options: dict) -> list[dict]:
    """Two steps of `method` on the micro model; the adapter is checked to have trained and to load."""
    data = write_jsonl(tmp_path / "pref.jsonl", PREFERENCE)
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", data, fmt="preference",
                         train={"method": method, "max_steps": 2, "micro_batch_size": 4, method: options},
                         data={"template": "completion", "validation": 0})
    logs = Logs()
    assert train(recipe, extra_callbacks=[logs]).steps == 2
    run = tmp_path / "run"
    weights = load_file(run / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and torch.count_nonzero(v) for k, v in weights.items()), "LoRA B left at zero: nothing trained"
    from qlcode.inference import load_model

    loaded = load_model(None, run)
    ids = loaded.tokenizer("def f():\n    return", return_tensors="pt")["input_ids"]
    assert loaded.model.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2
    assert [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] == [r["loss"] for r in logs.rows if "loss" in r]
    return [r for r in logs.rows if "loss" in r]


def test_kto_trains_from_preference_rows_and_starts_at_one_half(tmp_path):
    rows = trained(tmp_path, "kto", {"beta": 0.1})
    # policy = reference at step 1: every reward and the KL estimate are 0, so each row's loss is 1 - sigmoid(0)
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)


def test_orpo_loss_is_the_chosen_nll_plus_beta_times_the_odds_ratio_term(tmp_path):
    rows = trained(tmp_path, "orpo", {"beta": 0.25})
    first = rows[0]
    # loss = NLL(chosen) - beta * mean(log sigmoid(log odds ratio)); TRL logs both parts
    assert first["loss"] == pytest.approx(first["nll_loss"] - 0.25 * first["log_odds_ratio"], abs=1e-4)
