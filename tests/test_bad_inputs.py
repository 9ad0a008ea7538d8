"""Every bad input a clear error naming the problem and the fix, never a traceback or a silent change.

The recipes are a corpus under tests/bad_inputs/recipes/: each file's first line says the message it
must produce ({path} stands for the file). Adding a case is adding a file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qlcode.errors import ModelError, QlcodeError, RecipeError
from qlcode.export.gguf_export import export_gguf
from qlcode.export.merge import merge
from qlcode.recipe import load_recipe

from conftest import REPO, make_recipe

CORPUS = sorted((REPO / "tests" / "bad_inputs" / "recipes").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    return first.removeprefix("# expect: ").replace("{path}", str(path))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_each_bad_recipe_gets_its_message(path):
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == _expected(path)


def test_the_cli_prints_one_line_per_bad_recipe_and_exits_2():
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "recipes", "validate", *map(str, CORPUS)],
                         capture_output=True, text=True, cwd=REPO, timeout=300, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    for path in CORPUS:
        assert f"error: {_expected(path)}" in lines


@pytest.mark.parametrize("override, message", [
    ("nosuch.key=1", "command line (nosuch.key=1): nosuch: unknown key (valid keys: model, quant, lora, data, train, output, hub, distributed)"),
    ("lora.r=true", "command line (lora.r=true): lora.r: expected a value of type int, not true"),
    ("train.dpo.beta=0.2", "command line (train.dpo.beta=0.2): train: train.dpo is set, but train.method is sft: "
                           "remove train.dpo or set train.method: dpo"),
])
def test_overrides_are_blamed_on_the_command_line(override, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(REPO / "recipes" / "quickstart.yaml", [override])
    assert str(e.value) == message


def test_a_target_module_that_matches_nothing_names_the_real_ones(tmp_path, tiny_base, alpaca_file):
    from qlcode.train import trainable_model

    recipe = make_recipe(tmp_path, tiny_base, alpaca_file, lora={"target_modules": ["qproj", "v_proj"]})
    with pytest.raises(ModelError) as e:
        trainable_model(recipe)
    assert str(e.value) == ("lora.target_modules: qproj matches no module of this model; its linear layers are: "
                            "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj (or use all-linear)")


@pytest.fixture
def adapter_copy(tmp_path) -> Path:
    out = tmp_path / "adapter"
    shutil.copytree(REPO / "adapters" / "quickstart-example", out)
    return out


def test_merge_of_a_damaged_adapter_says_so(tmp_path, adapter_copy):
    weights = adapter_copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(QlcodeError, match=rf"^{weights}: not a readable safetensors file \(.*\); the adapter is damaged"):
        merge(adapter_copy, tmp_path / "out")
    weights.write_bytes(b"garbage" * 10)
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "merge", str(adapter_copy), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "not a readable safetensors file" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def model_copy(tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(REPO / "qlcode" / "builtin" / "micro-codellama", out)
    return out


def _break_config_json(d: Path) -> str:
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],\n  "hidden_size": 256,,\n}')
    return rf"^{d / 'config.json'}:2: not valid JSON \(Expecting property name enclosed in double quotes\)"


def _drop_rms_norm_eps(d: Path) -> str:
    cfg = json.loads((d / "config.json").read_text())
    del cfg["rms_norm_eps"]
    (d / "config.json").write_text(json.dumps(cfg))
    return rf"^{d / 'config.json'}: no rms_norm_eps; a Llama config has them \(copy config.json from the base model\)$"


def _garbage_weights(d: Path) -> str:
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    return rf"^{d / 'model.safetensors'}: not a readable safetensors file \(.*\); re-create it \(qlcode merge\) or copy it again$"


def _no_tokenizer(d: Path) -> str:
    (d / "tokenizer.json").unlink()
    return rf"^{d}: no tokenizer.json or tokenizer.model; GGUF carries the tokenizer"


@pytest.mark.parametrize("damage", [_break_config_json, _drop_rms_norm_eps, _garbage_weights, _no_tokenizer])
def test_export_of_a_damaged_model_directory_says_what_is_wrong(model_copy, damage):
    expected = damage(model_copy)
    with pytest.raises(QlcodeError, match=expected):
        export_gguf(model_copy, model_copy / "model.gguf")
    assert [p.name for p in model_copy.iterdir() if p.suffix == ".gguf" or p.name.endswith(".tmp")] == []


def test_export_to_a_folder_that_does_not_exist(model_copy, tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "export", str(model_copy), "--out", str(tmp_path / "no" / "m.gguf")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"--out: the folder {tmp_path / 'no'} does not exist; create it or choose another path" in " ".join(res.stderr.split())
