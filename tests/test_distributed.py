"""Several processes on torch's launcher: DDP over gloo on CPU end to end (one machine and two
"machines" on one host), a rank killed mid-run, FSDP2 sharding of the 4-bit model with LoRA on gloo,
DeepSpeed configs as DeepSpeed validates them, and the recipe's checks of combinations that fail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from qlcode.recipe import load_recipe
from qlcode.runs import RunDir
from qlcode.train import train

from conftest import REPO, make_recipe, write_jsonl

# 2 processes x micro batch 4 against 1 process x micro batch 8 (5 steps: all within the first epoch of 45 rows, as
# accelerate pads an epoch's uneven last batch with repeated rows): the same 8 rows per step, the gradient
# averaged over them by DDP instead of in one batch; fp32 sums in another order (measured: max 3e-7)
DDP_ATOL = 1e-5
STEPS = {"max_steps": 5, "save_steps": 3, "micro_batch_size": 4, "logging_steps": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qlcode(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlcode.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600, **kw)


def assert_adapters_close(a: RunDir, b: RunDir, atol: float) -> float:
    wa, wb = load_file(a.weights), load_file(b.weights)
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"adapters differ by {worst:.3g} (tolerance {atol:g})"
    return worst


@pytest.fixture(scope="module")
def ddp_rows(tmp_path_factory, stdlib_rows):
    return write_jsonl(tmp_path_factory.mktemp("ddp-data") / "rows.jsonl", stdlib_rows[:64])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_base, ddp_rows) -> RunDir:
    """The reference: one process, micro batch 8."""
    recipe = make_recipe(tmp_path_factory.mktemp("one"), tiny_base, ddp_rows, train={**STEPS, "micro_batch_size": 8})
    train(recipe)
    return RunDir(recipe.output.run_dir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_base, ddp_rows) -> RunDir:
    """`qlcode train R --gpus 2`: two gloo processes, micro batch 4 each."""
    tmp = tmp_path_factory.mktemp("gpus2")
    recipe = make_recipe(tmp, tiny_base, ddp_rows, train=STEPS)
    res = qlcode("train", str(tmp / "recipe.yaml"), "--gpus", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run summary") == 1 and "effective batch 4 x 1 x 2" in " ".join(res.stderr.split())
    assert "run: 2 processes" in " ".join(res.stderr.split())
    return RunDir(recipe.output.run_dir)


def test_two_processes_train_the_adapter_one_process_trains_with_their_batch(one_process, two_processes):
    worst = assert_adapters_close(two_processes, one_process, DDP_ATOL)
    print(f"DDP 2 x 4 vs 1 x 8: max |adapter difference| {worst:.3g}")
    steps = [r["step"] for r in two_processes.metrics() if "loss" in r]
    assert steps == [1, 2, 3, 4, 5], "one metrics row per optimizer step, written once"
    losses = lambda run: [r["loss"] for r in run.metrics() if "loss" in r]  # noqa: E731
    assert losses(two_processes) == pytest.approx(losses(one_process), abs=1e-5)
    assert two_processes.finished and not (two_processes.path / ".adapter.tmp").exists()
    assert two_processes.recorded_world_size() == 2 and one_process.recorded_world_size() == 1
    assert sorted(p.name for p in (two_processes.checkpoints / "checkpoint-5").glob("rng_state*")) == \
        ["rng_state_0.pth", "rng_state_1.pth"]


def test_torchrun_runs_the_same_command(tmp_path, tiny_base, ddp_rows, two_processes):
    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, train=STEPS)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "qlcode.cli", "train", str(tmp_path / "recipe.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_adapters_close(RunDir(recipe.output.run_dir), two_processes, 0.0)


def test_two_machines_on_one_host(tmp_path, tiny_base, ddp_rows, two_processes):
    """--nnodes 2, one process each: two launchers meeting at 127.0.0.1 train what --gpus 2 trains."""
    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, train=STEPS)
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "qlcode.cli", "train", str(tmp_path / "recipe.yaml"), "--nnodes", "2",
                               "--node-rank", str(i), "--master-addr", "127.0.0.1", "--master-port", port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in (0, 1)]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "2 machines" in " ".join(outs[0][1].split()) and "qlcode train" not in outs[1][1]
    assert_adapters_close(RunDir(recipe.output.run_dir), two_processes, 0.0)


def test_a_killed_rank_ends_the_run_with_its_name_and_resume_finishes_it(tmp_path, tiny_base, ddp_rows, two_processes):
    import psutil

    from qlcode.distributed.resume import check_resume
    from qlcode.errors import QlcodeError

    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, train=STEPS)
    run = RunDir(recipe.output.run_dir)
    cmd = [sys.executable, "-m", "qlcode.cli", "train", str(tmp_path / "recipe.yaml"), "--gpus", "2"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 300
    while run.latest_checkpoint() is None and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1 and not run.finished, "the run ended before a checkpoint could be watched for"
    rank1[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    print(f"launcher exited {time.monotonic() - killed:.1f} s after the kill")
    assert launcher.returncode == 2 and time.monotonic() - killed < 60
    assert f"error: rank 1 (local rank 1, pid {rank1[0].pid}) was killed by SIGKILL" in " ".join(stderr.split())
    assert not run.finished and run.recorded_world_size() == 2

    # another number of processes: DDP goes on and says what changes; sharded state refuses
    assert "resuming with 1 processes where the checkpoints were written by 2" in check_resume(recipe, 1)
    sharded = load_recipe(tmp_path / "recipe.yaml", ["distributed.strategy=deepspeed"])
    with pytest.raises(QlcodeError, match=r"its checkpoints hold deepspeed state sharded over 2 process\(es\), and this run "
                                          r"has 1: resume with 2 \(--gpus 2 on one machine\)"):
        check_resume(sharded, 1)
    assert check_resume(recipe, 2) is None

    res = qlcode("train", str(tmp_path / "recipe.yaml"), "--gpus", "2", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1, 2, 3, 4, 5]
    assert_adapters_close(run, two_processes, 1e-6)
