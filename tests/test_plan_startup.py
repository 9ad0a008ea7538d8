"""The plan's lora.init line: the start-up peak of PiSSA, OLoRA and LoftQ against the tensors the real
initialisation creates on a tiny model (torch.linalg.svd / qr recorded while qlcode builds the adapter)."""

from __future__ import annotations

import pytest
import torch

import qlcode.train
from qlcode.models import load_recipe_base
from qlcode.plan import GiB, plan_recipe
from qlcode.train import trainable_model

from conftest import make_recipe


def _record_decompositions(monkeypatch) -> list[tuple[torch.Tensor, list[int]]]:
    """Every torch.linalg.svd / qr call: (its input, its outputs' bytes)."""
    calls = []
    for name in ("svd", "qr"):
        real = getattr(torch.linalg, name)

        def wrapped(a, *args, _real=real, **kwargs):
            out = _real(a, *args, **kwargs)
            calls.append((a, [t.nbytes for t in out]))
            return out

        monkeypatch.setattr(torch.linalg, name, wrapped)
    return calls


@pytest.mark.parametrize("init, bits, dtype", [("pissa", None, "bf16"), ("pissa", None, "fp32"), ("olora", None, "bf16"),
                                               ("loftq", 4, "fp32")])
def test_the_startup_line_counts_the_tensors_the_initialisation_creates(tmp_path, tiny_base, alpaca_file, monkeypatch,
                                                                        init, bits, dtype):
    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, quant={"bits": bits}, model={"dtype": dtype},
                         lora={"init": init, "target_modules": "all-linear"})
    planned = plan_recipe(recipe, device="cpu")
    calls = _record_decompositions(monkeypatch)
    weights = set()  # the loaded weights' storage, before the initialisation replaces (PiSSA, OLoRA) any of them

    def load(recipe):
        base = load_recipe_base(recipe)
        weights.update(p.untyped_storage().data_ptr() for p in base.parameters())
        return base

    monkeypatch.setattr(qlcode.train, "load_recipe_base", load)
    trainable_model(recipe)
    assert len(calls) == 2 * 7  # one decomposition per target layer: 7 linear layers x 2 blocks
    peaks = []
    for a, outputs in calls:
        m, n = a.shape
        assert a.dtype == torch.float32
        # the decomposed matrix counts when it is a copy (bf16 weight cast to fp32, LoftQ's residual), not the weight itself
        copy = 0 if a.untyped_storage().data_ptr() in weights else a.nbytes
        # after the decomposition: PiSSA's update s B A and the new weight, OLoRA's update, PEFT's k x k diag(S) for LoftQ
        extra = {"pissa": 2 * 4 * m * n, "olora": 4 * m * n, "loftq": 4 * min(m, n) ** 2}[init]
        peaks.append(copy + sum(outputs) + extra)
    assert (copy > 0) == (dtype == "bf16" or init == "loftq")
    assert planned.startup is not None and planned.startup.bytes == max(peaks)
    assert planned.startup.name == f"lora.init: {init}"
    resident = planned.part("base weights") + planned.part("embeddings, lm_head, norms") + planned.part("LoRA weights")
    assert f"with the weights {(resident + max(peaks)) / GiB:.2f} GiB, before training" in planned.startup.detail


def test_plan_prints_the_startup_line_and_leaves_it_out_of_the_total(tmp_path, tiny_base, alpaca_file):
    from typer.testing import CliRunner

    from qlcode.cli import app

    make_recipe(tmp_path, tiny_base, alpaca_file, lora={"init": "loftq"})
    res = CliRunner().invoke(app, ["plan", str(tmp_path / "recipe.yaml")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "│ lora.init: loftq  " in res.output and "training (not in the total)" in res.output
    default = make_recipe(tmp_path, tiny_base, alpaca_file)
    loftq = make_recipe(tmp_path, tiny_base, alpaca_file, lora={"init": "loftq"})
    assert plan_recipe(loftq).total == plan_recipe(default).total and plan_recipe(default).startup is None
