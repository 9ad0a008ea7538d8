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
    return rf"^{d / 'config.json'}: no rms_norm_eps; a llama config has them \(copy config.json from the base model\)$"


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


@pytest.mark.parametrize("args, message", [
    (["eval", "--bench", "python-basics", "--solutions", "reference", "--limit", "-3"], "--limit -3: the number of problems is at least 1"),
    (["eval", "--bench", "python-basics", "--solutions", "reference", "--limit", "0"], "--limit 0: the number of problems is at least 1"),
    (["eval", "--bench", "python-basics", "--solutions", "reference", "--temperature", "-1"],
     "--temperature -1: the sampling temperature (0 = greedy) is at least 0"),
    (["eval", "--bench", "python-basics", "--solutions", "reference", "--k", "abc"], "--k abc: give whole numbers separated by commas, e.g. 1,10"),
    (["pairs", "--problems", "builtin:python-basics", "--out", "p.jsonl", "--samples", "0"],
     "--samples 0: the number of samples per problem is at least 1"),
    (["plan", "recipes/quickstart.yaml", "--gpu", "0GB"],
     "--gpu 0GB: a GPU has some memory; give a size such as 24GB or a name such as A100-80GB"),
    (["adapters", "list", "--root", "README.md"],
     "--root README.md: a file, not a directory of runs (runs land in adapters/ under the directory you train in)"),
    (["play", "--port", "99999"], "--port 99999: a TCP port is 1-65535 (the default is 7860)"),
])
def test_numbers_and_options_out_of_range_are_one_line_errors(args, message, monkeypatch):
    from typer.testing import CliRunner

    from qlcode.cli import app

    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert (res.exit_code, res.output) == (2, f"error: {message}\n")


def test_infill_of_a_latin1_file_names_the_line(tmp_path):
    from typer.testing import CliRunner

    from qlcode.cli import app

    src = tmp_path / "latin.py"
    src.write_bytes('def f():\n    return "café" <FILL>\n'.encode("latin-1"))
    res = CliRunner().invoke(app, ["infill", str(src)], env={"COLUMNS": "200"})
    assert (res.exit_code, res.output) == (2, f"error: {src}:2: not UTF-8 text (byte 0xe9); save the file as UTF-8 "
                                              "(e.g. iconv -f latin1 -t utf-8)\n")


READ_ONLY = Path("/sys")  # refuses new files even to root (a chmod'ed folder does not: tests may run as root)


@pytest.mark.skipif(not READ_ONLY.is_dir(), reason="needs Linux's /sys, a folder nobody may create files in")
def test_export_and_merge_into_a_folder_that_refuses_files(tmp_path, adapter_copy):
    for args in (["export", "builtin:micro-codellama", "--out", str(READ_ONLY / "m.gguf")],
                 ["merge", str(adapter_copy), "--out", str(READ_ONLY / "merged")]):
        res = subprocess.run([sys.executable, "-m", "qlcode.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith(f"error: --out: cannot write in {READ_ONLY} (")
        assert res.stderr.rstrip().endswith("); choose a folder you can write to with --out")


def test_merge_with_a_local_base_that_moved_does_not_talk_about_the_hub(tmp_path, adapter_copy):
    recipe = adapter_copy / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("base: builtin:micro-codellama", f"base: {tmp_path / 'gone'}"))
    with pytest.raises(QlcodeError) as e:
        merge(adapter_copy, tmp_path / "out")
    assert str(e.value) == (f"the adapter's base '{tmp_path / 'gone'}' is no longer a model directory; put the base model "
                            "back there, or set model.base in the run's recipe.yaml to where it is now")


def test_user_text_with_rich_markup_is_printed_as_given(tmp_path):
    from typer.testing import CliRunner

    from qlcode.cli import app

    (tmp_path / "[red]x[" / "red]").mkdir(parents=True)
    path = tmp_path / "[red]x[" / "red]" / "r.yaml"  # the path's text holds [red]x[/red]
    shutil.copy(REPO / "tests" / "bad_inputs" / "recipes" / "key-with-markup.yaml", path)
    res = CliRunner().invoke(app, ["recipes", "validate", "--no-data", str(path)], env={"COLUMNS": "300"})
    assert res.exit_code == 2
    assert res.output == (f"error: {path}:4: model.[/b]: unknown key (valid keys: base, revision, dtype, attn_implementation, "
                          "rope_theta, rope_scaling, max_position_embeddings)\n")
    path.write_text(path.read_text().replace('  "[/b]": 1\n', ""))
    res = CliRunner().invoke(app, ["recipes", "validate", "--no-data", str(path)], env={"COLUMNS": "300"})
    assert (res.exit_code, res.output) == (0, f"ok {path}\n")


def test_the_evaluation_before_training_shows_progress(capsys):
    from qlcode.callbacks import ProgressBar, Throughput

    bar = ProgressBar(Throughput())
    for _ in range(3):
        bar.on_prediction_step(None, None, None, eval_dataloader=[0, 0, 0])
    bar.on_evaluate(None, None, None)
    assert "eval" in capsys.readouterr().err and bar.eval is None


def _micro_recipe(tmp_path: Path, **train) -> Path:
    import yaml

    from conftest import write_jsonl

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": f"Return {i}.", "input": "", "output": f"return {i}"}
                                                 for i in range(16)])
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"base": "builtin:micro-codellama"},
        "data": {"datasets": [{"source": str(rows), "format": "alpaca"}], "validation": 0, "max_length": 64},
        "train": {"max_steps": 8, "save_steps": 1, "logging_steps": 1, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                  "optimizer": "adamw_torch", "gradient_checkpointing": False, **train}}))
    return path


def _qlcode(args: list[str], **kw):
    import os

    return subprocess.run([sys.executable, "-m", "qlcode.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}, **kw)


def test_sigterm_says_what_ctrl_c_says_and_the_command_it_prints_resumes_this_run(tmp_path):
    import os
    import shlex
    import signal
    import time

    from qlcode.runs import RunDir

    # 32 steps: on an idle machine 8 could all end between the first checkpoint and the signal
    recipe, out = _micro_recipe(tmp_path, max_steps=32), tmp_path / "elsewhere"
    proc = subprocess.Popen([sys.executable, "-m", "qlcode.cli", "train", str(recipe), f"output.dir={out}"], cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    command = f"qlcode train {recipe} output.dir={out} --resume"
    assert last == f"terminated (SIGTERM): continue from the last checkpoint with  {command}"
    assert not RunDir(out).finished

    res = _qlcode(shlex.split(command)[1:], cwd=tmp_path)  # run as printed
    assert res.returncode == 0, res.stderr
    assert RunDir(out).finished and RunDir(out).summary()["steps"] == 32


def test_a_file_size_limit_at_a_checkpoint_says_what_happened_and_resume_finishes(tmp_path):
    import re

    from qlcode.runs import RunDir

    recipe, out = _micro_recipe(tmp_path, max_steps=2), tmp_path / "run"
    limited = ("import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))\n"
               "from qlcode.cli import app\n"
               f"app(['train', {str(recipe)!r}, 'output.dir={out}'])\n")
    res = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "300", "HOME": str(tmp_path)})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    # the adapter (327,680 fp32 values) passes the 1 MB limit: the first checkpoint fails; the estimate is weights and Adam
    assert re.search(rf"^error: a file outgrew the file-size limit \(EFBIG, ulimit -f\) while saving to {out}: a save needs "
                     r"about 3\.8 MiB and [\d,]+ MiB are free there; every complete checkpoint is kept: make room \(or raise "
                     rf"the limit\) and continue with --resume:  qlcode train {recipe} output.dir={out} --resume$",
                     res.stderr.strip().splitlines()[-1]), res.stderr
    assert not RunDir(out).finished and list((out / "checkpoints").glob("checkpoint-*")) == []
    res = _qlcode(["train", str(recipe), f"output.dir={out}", "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert RunDir(out).summary()["steps"] == 2


def test_an_offline_hub_push_says_the_adapter_is_saved_and_how_to_push_it(tmp_path, tiny_base, monkeypatch):
    from conftest import make_recipe, write_jsonl
    from qlcode.runs import RunDir
    from qlcode.train import train

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": f"Return {i}.", "input": "", "output": f"return {i}"}
                                                 for i in range(8)])
    recipe = make_recipe(tmp_path, tiny_base, rows, train={"max_steps": 2}, hub={"repo_id": "alice/x", "push": True})
    with pytest.raises(QlcodeError) as e:
        train(recipe)
    run = tmp_path / "run"
    assert str(e.value) == ("HF_HUB_OFFLINE is set, so the Hub is not asked: nothing was uploaded; unset HF_HUB_OFFLINE to push; "
                            f"the adapter is saved in {run}: push it later with  qlcode push {run} --repo alice/x")
    assert RunDir(run).finished


def test_a_recipe_that_reuses_a_mapping_by_alias_is_located_at_its_anchor(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("model:\n  base: builtin:micro-codellama\n"
                    "data:\n  datasets:\n    - &ds\n      source: builtin:stdlib-python-instruct\n      format: alpaca\n"
                    "      max_rowz: 10\n    - *ds\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    # both datasets are the one anchored mapping (walked once): the second use points at the mapping it repeats
    assert str(e.value).splitlines() == [
        f"{path}:8: data.datasets[0].max_rowz: unknown key (did you mean data.datasets[0].max_rows?)",
        f"{path}:5: data.datasets[1].max_rowz: unknown key (did you mean data.datasets[1].max_rows?)"]



def test_a_samples_file_nested_too_deep_is_a_one_line_error(tmp_path):
    """json.loads raises RecursionError on deep nesting; the jsonl reader names the file and line instead."""
    from typer.testing import CliRunner

    from qlcode.cli import app
    from qlcode.files import TOO_DEEP

    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    res = CliRunner().invoke(app, ["eval", "--bench", "python-basics", "--samples", str(samples)], env={"COLUMNS": "300"})
    assert (res.exit_code, res.output) == (2, f"error: {samples}:2: {TOO_DEEP}\n")
