"""A run whose loss or weights stop being numbers stops, keeps its last good checkpoint, and resumes.

On the micro model: a learning rate of 1e30 after one warmup step at 0 turns the adapter's weights
into inf/NaN within two steps; the run must stop with the step and the likely cause, never write a
non-finite checkpoint or a finished adapter, and `--resume` at a sane learning rate must finish it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from qlcode.callbacks import Diverged, DivergenceGuard
from qlcode.runs import RunDir
from qlcode.train import train

from conftest import make_recipe, write_jsonl

ROWS = [{"instruction": f"Return {i} plus {j}.", "input": "", "output": f"def f():\n    return {i} + {j}\n"}
        for i in range(6) for j in range(4)]
STEPS = {"max_steps": 6, "save_steps": 1, "logging_steps": 1, "micro_batch_size": 2, "warmup": 3,
         "lr_scheduler": "constant_with_warmup"}


def _recipe(tmp_path, lr: float):
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    return make_recipe(tmp_path, "builtin:micro-codellama", rows, data={"validation": 0, "max_length": 64},
                       train={**STEPS, "learning_rate": lr})


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_resumes(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(Diverged) as e:
        train(_recipe(tmp_path, 1e30))
    # step 1 trains at learning rate 0 (warmup); step 2's update at 3.3e29 is finite but its weights are never
    # shown to give a finite loss: step 3 makes them inf/NaN, caught before checkpoint-3 is written
    assert str(e.value) == (
        "training diverged: the adapter's weights are no longer finite numbers at step 3; likely cause: the learning "
        "rate is too high (train.learning_rate 1e+30) or rows that give no loss (check the data); the run is not "
        f"finished (moved checkpoint-2, written after the last finite loss, to {run.path / 'diverged'}); the last good "
        f"checkpoint is {run.checkpoints / 'checkpoint-1'}: continue from it with --resume and a lower train.learning_rate")
    assert not run.finished and not run.summary_path.exists()
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (run.path / "diverged" / "checkpoint-2").is_dir()
    good = load_file(run.checkpoints / "checkpoint-1" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert all(math.isfinite(r["loss"]) for r in run.metrics() if "loss" in r)

    result = train(_recipe(tmp_path, 2e-3), resume=True)
    assert result.steps == 6 and run.finished
    weights = load_file(run.weights)
    assert all(torch.isfinite(t).all() for t in weights.values())
    rates = {r["step"]: r["learning_rate"] for r in run.metrics() if "learning_rate" in r}
    # the resumed schedule keeps its warmup shape at the recipe's new peak, not the checkpoint's 1e30
    assert rates[2] == pytest.approx(2e-3 / 3, rel=1e-6) and rates[6] == pytest.approx(2e-3, rel=1e-6)
    assert run.recipe().train.learning_rate == 2e-3


def _guard(tmp_path, weight: float, fp16: bool = False):
    guard = DivergenceGuard(RunDir(tmp_path))
    args = SimpleNamespace(fp16=fp16, logging_steps=5, learning_rate=2e-4)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(weight)
    guard.on_train_begin(args, SimpleNamespace(global_step=0), None)
    return guard, args, model


def _log(guard, args, model, step, **logs):
    guard.on_log(args, SimpleNamespace(global_step=step), None, logs=logs, model=model)


def test_a_nan_loss_stops_at_its_log_naming_the_steps(tmp_path):
    guard, args, model = _guard(tmp_path, 1.0)
    _log(guard, args, model, 5, loss=1.5, grad_norm=0.9)
    with pytest.raises(Diverged, match=r"^training diverged: the loss is nan in steps 6-10 \(logged every 5\); likely cause: "
                                       r"the learning rate is too high \(train.learning_rate 0.0002\) or rows that give no loss"):
        _log(guard, args, model, 10, loss=float("nan"), grad_norm=0.9)


def test_steps_that_changed_nothing_are_tolerated_but_not_forever(tmp_path):
    guard, args, model = _guard(tmp_path, 1.0, fp16=True)
    for step in range(5, 50, 5):  # fp16's scaler skips overflowing steps while it finds its scale: weights stay finite
        _log(guard, args, model, step, loss=1.5, grad_norm=float("inf"))
    _log(guard, args, model, 50, loss=1.2, grad_norm=0.5)
    for step in range(55, 100, 5):
        _log(guard, args, model, step, loss=float("inf"), grad_norm=float("inf"))
    with pytest.raises(Diverged, match=r"the loss is inf and the gradient norm is inf in steps 96-100 .* or fp16 overflows"):
        _log(guard, args, model, 100, loss=float("inf"), grad_norm=float("inf"))
    guard, args, model = _guard(tmp_path, 1.0, fp16=False)
    _log(guard, args, model, 5, loss=1.5, grad_norm=float("inf"))  # clipped to nothing: the weights did not move
    with pytest.raises(Diverged, match=r"^training diverged: the loss is nan in steps 6-10"):  # without fp16, at once
        _log(guard, args, model, 10, loss=float("nan"), grad_norm=0.5)


def test_non_finite_weights_stop_the_run_at_once_even_under_fp16(tmp_path):
    guard, args, model = _guard(tmp_path, float("nan"), fp16=True)
    with pytest.raises(Diverged, match=r"the gradient norm is nan in steps 1-5 \(logged every 5\), and the adapter's weights "
                                       r"are no longer finite; .* no good checkpoint was written: run again with --resume"):
        _log(guard, args, model, 5, loss=2.0, grad_norm=float("nan"))
