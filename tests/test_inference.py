"""Loading for inference: an adapter is evaluated and infilled on the base exactly as it was trained."""

from __future__ import annotations

import subprocess
import sys

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from qlcode.inference import load_model, sampling_args
from qlcode.models import Quantization, load_base, load_recipe_base
from qlcode.train import train

from conftest import REPO, make_recipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base, stdlib_rows):
    """Tiny adapters trained over an FP4 base without double quantization, and over a full-precision base."""
    from conftest import write_jsonl

    tmp = tmp_path_factory.mktemp("inference")
    data = write_jsonl(tmp / "rows.jsonl", stdlib_rows[:16])
    made = {}
    for name, quant in (("fp4", {"bits": 4, "type": "fp4", "double_quant": False}), ("none", {"bits": None})):
        recipe = make_recipe(tmp / name, tiny_base, data, quant=quant,
                             train={"max_steps": 2, "learning_rate": 5e-2}, data={"validation": 0})
        train(recipe)
        made[name] = recipe
    return made


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_an_adapter_loads_on_the_base_it_was_trained_on(runs, tiny_base):
    ids = torch.tensor([[1, 300, 301, 302, 303, 304]])
    fp4 = load_model(adapter=runs["fp4"].output.run_dir)
    layers = [m for m in fp4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.weight.quant_type for m in layers} == {"fp4"}
    assert {m.weight.quant_state.nested for m in layers} == {False}
    assert fp4.quant == Quantization(bits=4, type="fp4", double_quant=False)
    as_trained = PeftModel.from_pretrained(load_recipe_base(runs["fp4"]), str(runs["fp4"].output.run_dir)).eval()
    torch.testing.assert_close(_logits(fp4.model, ids), _logits(as_trained, ids), rtol=0, atol=1e-6)
    on_nf4 = PeftModel.from_pretrained(load_base(str(tiny_base)), str(runs["fp4"].output.run_dir)).eval()
    assert (_logits(on_nf4, ids) - _logits(fp4.model, ids)).abs().max() > 1e-3, "the base's 4-bit type matters"

    full = load_model(adapter=runs["none"].output.run_dir)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in full.model.modules())
    assert full.quant.bits is None and full.instruct  # trained in the instruct template


def test_infill_takes_the_trained_base(runs):
    """`qlcode infill --adapter` runs on each adapter through load_model (so do eval, pairs and the playground)."""
    for name in ("fp4", "none"):
        run = str(runs[name].output.run_dir)
        res = subprocess.run([sys.executable, "-m", "qlcode.cli", "infill", "-", "--adapter", run, "--max-new-tokens", "4"],
                             input="def f(x):\n<FILL>\n", capture_output=True, text=True, cwd=REPO, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("def f(x):\n") and res.stdout.endswith("\n")


def test_a_base_alone_loads_with_the_quantization_asked_for(tiny_base):
    plain = load_model(str(tiny_base), quant=Quantization(bits=None))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.model.modules()) and not plain.instruct
    nf4 = load_model(str(tiny_base))
    assert {m.weight.quant_type for m in nf4.model.modules() if isinstance(m, bnb.nn.Linear4bit)} == {"nf4"}


def test_sampling_arguments_are_one_rule():
    assert sampling_args(0.0) == {"do_sample": False}
    assert sampling_args(0.7, 0.9) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}


def test_the_playground_loads_each_adapter_on_its_own_base(runs, tiny_base, tmp_path):
    """An adapter trained on the shared base joins it; one trained on another quantization is a model of its own."""
    from qlcode.ui.pool import Pool

    adapters = tmp_path / "adapters"
    adapters.mkdir()
    for name in ("fp4", "none"):
        (adapters / name).symlink_to(runs[name].output.run_dir)
    pool = Pool(base=str(tiny_base), bits=None, adapters=adapters)
    assert pool.choices() == ["base", "adapter:fp4", "adapter:none"]
    assert pool.shares_base("adapter:none") and not pool.shares_base("adapter:fp4")
    fp4 = pool.target("adapter:fp4").model
    assert fp4 is not pool.model
    assert {m.weight.quant_type for m in fp4.modules() if isinstance(m, bnb.nn.Linear4bit)} == {"fp4"}
    ids = torch.tensor([[1, 300, 301, 302]])
    torch.testing.assert_close(_logits(fp4, ids), _logits(load_model(adapter=runs["fp4"].output.run_dir).model, ids),
                               rtol=0, atol=1e-6)
    assert pool.target("adapter:none").model is pool.model  # full precision, like the shared base
