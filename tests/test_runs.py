"""The run directory: never written over something else, one run at a time, and a kill during the
final save loses nothing but the save."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from qlcode.errors import QlcodeError, RecipeError
from qlcode.recipe import load_recipe
from qlcode.runs import LOCK, RunDir, list_runs, read_jsonl
from qlcode.train import train

from conftest import REPO, make_recipe, write_jsonl

ROWS = [{"instruction": f"Return {i} times {j}.", "input": "", "output": f"def f():\n    return {i} * {j}\n"}
        for i in range(5) for j in range(4)]


@pytest.fixture
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


@pytest.mark.parametrize("name", [".", ".."])
def test_a_run_name_of_dot_or_dotdot_is_refused(tmp_path, name):
    path = tmp_path / "r.yaml"
    path.write_text((REPO / "recipes" / "quickstart.yaml").read_text())
    with pytest.raises(RecipeError, match=rf"command line \(output.name={name}\): output.name: a run name .* is not . or .."):
        load_recipe(path, [f"output.name={name}"])


def test_training_never_writes_into_a_directory_of_other_things(tmp_path, tiny_base, rows_file):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("mine")
    recipe = make_recipe(tmp_path, tiny_base, rows_file, output={"dir": str(project)})
    with pytest.raises(RecipeError) as e:
        train(recipe)
    assert str(e.value) == (f"output.dir: {project} is not empty and holds no qlcode run; training would write over its "
                            "files: choose a new or empty directory")
    assert [p.name for p in project.iterdir()] == ["README.md"] and (project / "README.md").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RecipeError, match=rf"^{tmp_path / 'recipe.yaml'}:\d+: output.dir: {a_file} is a file; name a directory"):
        train(make_recipe(tmp_path, tiny_base, rows_file, output={"dir": str(a_file)}))


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_holds_it(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qlcode.runs import RunDir\n"
        f"with RunDir({str(run.path)!r}).lock():\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(QlcodeError) as e:
            with run.lock():
                pass
        assert str(e.value).startswith(f"{run.path} is in use by a run in progress (pid {holder.pid}, started 20")
        assert str(e.value).endswith("wait for it to end, or train into another directory (output.name=...)")
    finally:
        holder.kill()  # as kill -9 would: the kernel releases the lock with the process
        holder.wait()
    with run.lock():  # the dead holder's lock is not stale
        assert (run.path / LOCK).read_text().startswith(f"pid {os.getpid()}, started ")


def test_bad_data_leaves_no_run_behind(tmp_path, tiny_base):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}] * 4)
    recipe = make_recipe(tmp_path, tiny_base, bad)
    with pytest.raises(QlcodeError, match="has no column 'instruction'"):
        train(recipe)
    assert not recipe.output.run_dir.exists()
    assert list_runs(tmp_path) == []


def test_a_kill_during_the_final_save_then_resume_keeps_the_books_straight(tmp_path, tiny_base, rows_file, monkeypatch):
    steps = {"max_steps": 6, "save_steps": 3, "logging_steps": 2}
    straight = make_recipe(tmp_path / "a", tiny_base, rows_file, train=steps)
    train(straight)
    broken = make_recipe(tmp_path / "b", tiny_base, rows_file, train=steps)
    real_save = RunDir.save_adapter

    def killed(*a, **kw):
        raise KeyboardInterrupt  # the process dies between the last checkpoint and the adapter

    monkeypatch.setattr(RunDir, "save_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        train(broken)
    monkeypatch.setattr(RunDir, "save_adapter", real_save)
    result = train(broken, resume=True)

    a, b = RunDir(tmp_path / "a" / "run"), RunDir(tmp_path / "b" / "run")
    assert result.steps == 6 and b.summary()["steps"] == 6 and b.summary()["tokens_per_s"] > 0
    keys = lambda rows: [(r["step"], sorted(r)) for r in rows]  # noqa: E731
    assert keys(b.metrics()) == keys(a.metrics()), "one row per log event, none twice, none past the last step"
    wa, wb = load_file(a.weights), load_file(b.weights)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    assert b.summary()["eval_loss_after"] == pytest.approx(a.summary()["eval_loss_after"], abs=1e-6)


def test_metrics_rows_of_the_checkpoint_step_are_kept_once(tmp_path):
    run = RunDir(tmp_path / "run")
    ckpt = run.checkpoints / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"loss": 1.0, "step": 2}, {"loss": 0.9, "step": 4}, {"eval_loss": 0.8, "step": 4}, {"train_runtime": 1.0, "step": 4}]}))
    rows = [{"step": 0, "eval_loss": 1.2}, {"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.9}, {"step": 4, "eval_loss": 0.8},
            {"step": 4, "eval_loss": 0.8}, {"step": 5, "loss": 0.7}]
    write_jsonl(run.metrics_path, rows)
    run.start(load_recipe(REPO / "recipes" / "quickstart.yaml"), ckpt)
    assert read_jsonl(run.metrics_path) == rows[:4]


def test_a_lock_file_alone_is_not_a_finished_or_listed_run(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.is_run() and not run.finished
    assert list_runs(tmp_path) == []


def test_two_processes_under_torchrun_write_one_run(tmp_path, tiny_base, rows_file):
    """2 CPU processes (gloo): both train, the main one alone writes metrics, adapter and summary."""
    recipe = make_recipe(tmp_path, tiny_base, rows_file, train={"max_steps": 4, "micro_batch_size": 2, "save_steps": 2})
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "qlcode.cli", "train", str(tmp_path / "recipe.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = RunDir(recipe.output.run_dir)
    assert [r["step"] for r in run.metrics()] == [0, 1, 2, 3, 4, 4]  # eval before, 4 steps, eval after
    assert run.finished and run.summary()["steps"] == 4 and not (run.path / ".adapter.tmp").exists()
    assert res.stdout.count("run summary") == 1 and "2 processes: effective batch 2 x 1 x 2" in " ".join(res.stderr.split())


def test_a_run_written_by_an_older_qlcode_still_reads(tmp_path):
    """Runs on disk keep loading after keys moved to their method's section (train.dpo_beta -> train.dpo.beta)."""
    from qlcode.recipe import read_run_recipe

    old = (REPO / "recipes" / "quickstart.yaml").read_text().replace(
        "  method: sft\n", "  method: dpo\n  dpo_beta: 0.3\n  dpo_loss: [sigmoid, sft]\n  neftune_noise_alpha: null\n")
    old = old.replace("format: alpaca", "format: preference")
    (tmp_path / "recipe.yaml").write_text(old)
    recipe = read_run_recipe(tmp_path / "recipe.yaml")
    assert recipe.train.dpo.beta == 0.3 and recipe.train.dpo.loss == ["sigmoid", "sft"] and recipe.train.sft is None
