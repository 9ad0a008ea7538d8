"""Several processes on torch's launcher: DDP over gloo on CPU end to end (one machine and two
"machines" on one host), a rank killed mid-run, FSDP2 sharding of the 4-bit model with LoRA on gloo,
DeepSpeed configs as DeepSpeed validates them, and the recipe's checks of combinations that fail."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest
from safetensors.torch import load_file

from qlcode.recipe import load_recipe
from qlcode.runs import RunDir
from qlcode.train import train

from conftest import REPO, make_recipe, write_jsonl

# 2 processes x micro batch 4 against 1 process x micro batch 8 (5 steps: all within the first epoch of 45 rows, as
# accelerate pads an epoch's uneven last batch with repeated rows): the same 8 rows per step, the gradient
# averaged over them by DDP instead of in one batch; fp32 sums in another order (measured: max 3e-7)
DDP_ATOL = 1e-5
# One process per "machine" (--nnodes 2) runs with every core's thread, where --gpus 2, torchrun and accelerate
# launch give each of their 2 processes OMP_NUM_THREADS=1: the same sums, split over another number of threads.
# On a CPU with avx512_bf16 (oneDNN's kernels split the reduction by thread) the adapters then differ by 4.7e-6
# (measured; 0 with OMP_NUM_THREADS=1 everywhere), elsewhere by 0. A rank's gradient left out (one process on
# micro batch 4) moves them by 2.7e-2 (measured, weights up to 0.13): 1e-4 is 20x the noise and 270x below that.
THREADS_ATOL = 1e-4
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


@pytest.mark.parametrize("launcher", [
    ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", "{port}"],
    ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "{port}"],  # gloo on CPU
], ids=["torchrun", "accelerate-launch"])
def test_torchrun_and_accelerate_launch_run_the_same_command(tmp_path, tiny_base, ddp_rows, two_processes, launcher):
    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, train=STEPS)
    port = str(free_port())
    res = subprocess.run([sys.executable, "-m", *[a.format(port=port) for a in launcher], "-m", "qlcode.cli", "train",
                          str(tmp_path / "recipe.yaml")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run summary") == 1
    # the same 2 processes of 1 thread each (both launchers set OMP_NUM_THREADS=1): the same sums in the same order
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
    worst = assert_adapters_close(RunDir(recipe.output.run_dir), two_processes, THREADS_ATOL)
    print(f"--nnodes 2 vs --gpus 2: max |adapter difference| {worst:.3g}")


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


def test_a_rank_killed_on_one_machine_ends_the_other_machine_too(tmp_path, tiny_base, ddp_rows):
    import psutil

    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, train={**STEPS, "max_steps": 40})
    run, port = RunDir(recipe.output.run_dir), str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "qlcode.cli", "train", str(tmp_path / "recipe.yaml"), "--nnodes", "2",
                               "--node-rank", str(i), "--master-addr", "127.0.0.1", "--master-port", port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in (0, 1)]
    deadline = time.monotonic() + 300
    while run.latest_checkpoint() is None and nodes[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = [p for p in psutil.Process(nodes[1].pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1 and not run.finished
    rank1[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    errs = [" ".join(n.communicate(timeout=300)[1].split()) for n in nodes]
    print(f"both machines' launchers exited {time.monotonic() - killed:.1f} s after the kill")
    assert [n.returncode for n in nodes] == [2, 2] and time.monotonic() - killed < 60
    assert f"error: rank 1 (local rank 0, pid {rank1[0].pid}) was killed by SIGKILL" in errs[1]
    assert "error: rank 0 (local rank 0, pid" in errs[0] and "exited with code 1" in errs[0]
    assert "a process that died on another machine fails this one's next collective: see that machine's output" in errs[0]


def test_fsdp_shards_the_4bit_model_with_lora_and_gathers_the_adapter(tmp_path):
    """accelerate enables FSDP on GPUs only: qlcode's fsdp_config, through transformers and accelerate's FSDP2
    preparation, applied on 2 gloo processes to the micro model in 4-bit with LoRA (tests/fsdp_worker.py)."""
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["sharded"] and got["n_weights4"] == 28 and got["n_lora"] == 56, "every 4-bit weight and LoRA matrix is a shard"
    assert got["loss"] == pytest.approx(got["ref_loss"], abs=1e-6) and got["grad_rel_error"] <= 1e-6
    assert got["step_error"] <= 1e-6 and got["loss_after_step"] == pytest.approx(got["ref_loss_after_step"], abs=1e-5)
    assert got["loss_after_step"] < got["loss"] - 0.1, "the optimizer step on the shards trains"
    assert got["reload_loss_error"] <= 1e-5, "the adapter gathered to rank 0 reloads as the model trained"
    assert RunDir(tmp_path / "run").finished


def recipe_error(tmp_path, tiny_base, ddp_rows, **sections) -> str:
    from qlcode.errors import RecipeError

    with pytest.raises(RecipeError) as e:
        make_recipe(tmp_path, tiny_base, ddp_rows, **sections)
    where, message = str(e.value).split(": ", 1)
    assert where.startswith(str(tmp_path / "recipe.yaml"))  # file:line
    return message


def test_fsdp_and_zero3_combinations_that_fail_are_recipe_errors(tmp_path, tiny_base, ddp_rows):
    fsdp = {"distributed": {"strategy": "fsdp"}}
    assert recipe_error(tmp_path, tiny_base, ddp_rows, **fsdp) == (
        "quant.storage_dtype: FSDP shards 4-bit weights only in a float container (uint8 ones stay whole on "
        "every GPU): set quant.storage_dtype: bf16 and model.dtype: bf16")
    assert recipe_error(tmp_path, tiny_base, ddp_rows, quant={"storage_dtype": "bf16"}, **fsdp) == (
        "model.dtype: FSDP with 4-bit weights needs model.dtype equal to quant.storage_dtype (bf16), so that "
        "every shard holds one dtype: set model.dtype: bf16")
    assert recipe_error(tmp_path, tiny_base, ddp_rows, model={"dtype": "bf16"}, quant={"storage_dtype": "bf16"},
                        train={"optimizer": "paged_adamw_8bit"}, **fsdp) == (
        "train.optimizer: paged_adamw_8bit fails when FSDP saves a checkpoint of a 4-bit model: set "
        "train.optimizer: adamw_torch (or adamw_8bit)")
    assert recipe_error(tmp_path, tiny_base, ddp_rows, quant={"bits": 8}, distributed={"strategy": "deepspeed", "zero_stage": 3}) == (
        "quant.bits: DeepSpeed ZeRO-3 cannot shard 8-bit bitsandbytes weights: use quant.bits: 4 (with "
        "quant.storage_dtype: bf16) or distributed.strategy: ddp")
    assert "distributed.zero_stage is a DeepSpeed setting, but distributed.strategy is fsdp" in recipe_error(
        tmp_path, tiny_base, ddp_rows, distributed={"strategy": "fsdp", "zero_stage": 3})
    ok = make_recipe(tmp_path, tiny_base, ddp_rows, model={"dtype": "bf16"}, quant={"storage_dtype": "bf16"}, **fsdp)
    assert ok.distributed.strategy == "fsdp" and ok.distributed.zero_stage is None


def test_fsdp_and_deepspeed_on_cpu_say_they_need_gpus_instead_of_training_as_ddp(tmp_path, tiny_base, ddp_rows, monkeypatch):
    from qlcode.distributed.args import trainer_args
    from qlcode.errors import QlcodeError

    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, quant={"storage_dtype": "fp32"}, model={"dtype": "fp32"},
                         distributed={"strategy": "fsdp", "timeout_minutes": 5})
    assert trainer_args(recipe) == {"ddp_timeout": 300}, "one process trains alone whatever the strategy"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(QlcodeError, match=r"^distributed.strategy: fsdp runs on GPUs .* use distributed.strategy: ddp here$"):
        trainer_args(recipe)
    zero2 = make_recipe(tmp_path, tiny_base, ddp_rows, distributed={"strategy": "deepspeed"})
    assert zero2.distributed.zero_stage == 2
    with pytest.raises(QlcodeError, match=r"^distributed.strategy: deepspeed runs on GPUs .* use distributed.strategy: ddp here$"):
        trainer_args(zero2)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert "distributed.strategy: DeepSpeed is not installed: pip install 'qlcode[deepspeed]', or set distributed.strategy: " \
           "ddp or fsdp" in " ".join(recipe_error(tmp_path, tiny_base, ddp_rows, distributed={"strategy": "deepspeed"}).split())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_pass_deepspeeds_own_validation(tmp_path, tiny_base, ddp_rows, stage):
    with mock.patch.dict(os.environ):  # DeepSpeed's plugin sets ACCELERATE_* variables: none outlives the test
        check_deepspeed_config(tmp_path, tiny_base, ddp_rows, stage)
    gc.collect()  # transformers holds the DeepSpeed config by a weak reference: ZeRO-3 ends with the arguments


def check_deepspeed_config(tmp_path, tiny_base, ddp_rows, stage):
    """The generated ZeRO config, its "auto" values filled by transformers from the recipe's TrainingArguments
    as the Trainer fills them, then parsed by DeepSpeed's DeepSpeedConfig (which checks the batch arithmetic)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install 'qlcode[deepspeed]'")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM

    from qlcode.distributed.deepspeed_config import deepspeed_config
    from qlcode.methods import METHODS
    from qlcode.train import common_args

    recipe = make_recipe(tmp_path, tiny_base, ddp_rows, model={"dtype": "fp32"}, quant={"storage_dtype": "fp32"},
                         train={"micro_batch_size": 2, "gradient_accumulation_steps": 3, "max_grad_norm": 0.5},
                         distributed={"strategy": "deepspeed", "zero_stage": stage})
    model = AutoModelForCausalLM.from_pretrained(tiny_base)  # before the arguments: with them ZeRO-3 partitions at load
    common = {**common_args(recipe), "use_cpu": False, "deepspeed": deepspeed_config(recipe)}
    args = METHODS["sft"].config(recipe, common, conversational=False)
    args.hf_deepspeed_config.trainer_config_finalize(args, model, 10)
    parsed = DeepSpeedConfig(args.hf_deepspeed_config.config)
    assert parsed.zero_optimization_stage == stage and parsed.train_micro_batch_size_per_gpu == 2
    assert parsed.gradient_accumulation_steps == 3 and parsed.train_batch_size == 6 and parsed.gradient_clipping == 0.5
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save
        assert parsed.zero_config.prefetch_bucket_size == int(0.9 * 64 * 64)  # hidden_size 64, filled from the model

    own = tmp_path / "ds.json"  # a user's own file is used as it is, its "auto" values filled the same way
    own.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                               "train_batch_size": "auto", "zero_optimization": {"stage": 1}}))
    users = make_recipe(tmp_path, tiny_base, ddp_rows, distributed={"strategy": "deepspeed", "deepspeed_config": str(own)})
    assert deepspeed_config(users)["zero_optimization"] == {"stage": 1} and users.distributed.zero_stage is None
    own.write_text("{not json")
    from qlcode.errors import QlcodeError

    with pytest.raises(QlcodeError, match=rf"^distributed.deepspeed_config: cannot read {own} as JSON"):
        deepspeed_config(users)
    assert "no such file 'missing.json'" in recipe_error(tmp_path, tiny_base, ddp_rows, distributed={
        "strategy": "deepspeed", "deepspeed_config": "missing.json"})


def test_launch_options_that_cannot_work_say_why(monkeypatch):
    from qlcode.distributed.launch import Launch, relaunch_command
    from qlcode.errors import QlcodeError

    for spec, message in [
        (Launch(gpus=0), r"--gpus and --nnodes count processes and machines: at least 1 \(got 0, 1\)"),
        (Launch(nnodes=2, node_rank=2, master_addr="10.0.0.1"), r"--node-rank 2: machines are numbered 0 to 1 \(--nnodes 2\)"),
        (Launch(nnodes=2), r"--nnodes > 1: give every machine the same --master-addr"),
    ]:
        with pytest.raises(QlcodeError, match=message):
            spec.check()
    two = Launch(gpus=2, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600)
    assert two.world_size == 4 and two.launcher_args(["train", "r.yaml"]) == [
        "--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29600",
        "--max_restarts", "0", "-m", "qlcode.cli", "train", "r.yaml"]
    assert Launch(gpus=2).launcher_args(["train"])[0] == "--standalone"
    assert relaunch_command(["train", "r.yaml", "--gpus", "2", "--master-port=29600", "lora.r=8", "--resume"]) == \
        ["train", "r.yaml", "lora.r=8", "--resume"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not Launch(gpus=2).needed
    with pytest.raises(QlcodeError, match=r"already runs under one \(torchrun or accelerate launch\): drop --gpus and --nnodes"):
        Launch(gpus=2).check()


def test_a_stopped_launcher_prints_the_command_that_resumes_this_very_run(monkeypatch):
    """Ctrl-C or SIGTERM to `qlcode train --gpus 2 ...`: the message is the whole command, launch options and
    overrides included (run as printed, it resumes the same run with the same processes)."""
    import shlex

    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from qlcode.distributed.launch import Launch, launch
    from qlcode.errors import QlcodeError

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    two = Launch(gpus=2, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600)
    assert two.options() == ["--gpus", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
                             "--master-port", "29600"]
    assert Launch().options() == []  # one process: nothing to launch
    again = shlex.join(["qlcode", "train", "r.yaml", "output.dir=/tmp/x", *Launch(gpus=2).options(), "--resume"])

    def stopped(args):
        raise SignalException("got SIGTERM", signal.SIGTERM)

    monkeypatch.setattr(torch.distributed.run, "run", stopped)
    with pytest.raises(QlcodeError) as e:
        launch(Launch(gpus=2), ["train", "r.yaml", "output.dir=/tmp/x"], again)
    assert str(e.value) == ("the launcher got SIGTERM and stopped every process of this run; continue from the last "
                            "checkpoint with  qlcode train r.yaml output.dir=/tmp/x --gpus 2 --resume")
