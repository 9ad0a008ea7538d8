"""One training run: recipe -> model and data -> the method's TRL trainer -> the run directory.

This is the training boundary: recipe sections become the plain arguments of qlcode.models and
the method's TRL config here. Under a launcher every process trains; only the main process
writes the run directory (qlcode.runs), and the others wait for it at the end.
"""

from __future__ import annotations

import errno
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from rich.markup import escape
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback

from qlcode.callbacks import DivergenceGuard, MetricsLog, ProgressBar, RecipeLearningRate, RewardSpread, Throughput
from qlcode.data import build
from qlcode.distributed.adapter import gathered_adapter
from qlcode.distributed.args import trainer_args
from qlcode.distributed.evaluation import can_evaluate_before_training, wrap_again_after_evaluation
from qlcode.errors import QlcodeError
from qlcode.methods import METHODS
from qlcode.model_card import adapter_card
from qlcode.models import (load_recipe_base, load_tokenizer, mutates_base, quantization_of, save_initial_adapter, use_kernels,
                           with_lora)
from qlcode.placement import placement
from qlcode.ranks import is_main_process, world_size
from qlcode.progress import console, peak_memory_gb
from qlcode.recipe import Recipe
from qlcode.runs import RunDir, RunStopped, checkpoint_step, is_final
from qlcode.tracking import tracked, tracker_problem


@dataclass
class RunResult:
    run_dir: str
    steps: int
    seconds: float
    tokens_per_s: float | None
    peak_memory_gb: float
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float | None
    compile_seconds: float | None = None  # with train.compile: see compile_seconds()


COMPILE_BACKEND = "inductor"  # torch.compile's own default; the tests patch in aot_eager, which compiles no C++


def _precision(recipe: Recipe) -> dict:
    place = placement(recipe.model.dtype, recipe.quant.compute_dtype)
    if place.device.type != "cuda":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"bf16": place.compute_dtype == torch.bfloat16, "fp16": place.compute_dtype == torch.float16}


def _check_tracker(name: str) -> None:
    if (problem := tracker_problem(name)) is not None:
        raise QlcodeError(f"train.report_to: {problem}")


def common_args(recipe: Recipe) -> dict:
    """The TrainingArguments every method shares."""
    t, data = recipe.train, recipe.data
    _check_tracker(t.report_to)
    return dict(
        output_dir=str(RunDir(recipe.output.run_dir).checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        torch_compile=t.compile,
        torch_compile_backend=COMPILE_BACKEND if t.compile else None,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.keep_checkpoints,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (DivergenceGuard stops the run), not hidden by an average
        report_to=[] if t.report_to == "none" else [t.report_to],
        seed=t.seed,
        data_seed=t.seed,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        max_length=data.max_length,
        **_precision(recipe),
        **trainer_args(recipe),
    )


def trainable_model(recipe: Recipe) -> PeftModel:
    """The recipe's base with its LoRA adapter, on the recipe's kernels."""
    lora = recipe.lora
    model = with_lora(load_recipe_base(recipe), r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                      target_modules=lora.target_modules, rslora=lora.rslora, dora=lora.dora,
                      modules_to_save=lora.modules_to_save, adapter=lora.adapter,
                      gradient_checkpointing=recipe.train.gradient_checkpointing, seed=recipe.train.seed, init=lora.init)
    model = use_kernels(model, quantization_of(recipe))
    if recipe.train.liger:
        from qlcode.kernels.liger import use_liger

        use_liger(model)
    if recipe.train.offload_activations:
        from qlcode.kernels.offload import offload_activations

        offload_activations(model)
    return model


def build_trainer(recipe: Recipe, extra_callbacks: list[TrainerCallback] = ()) -> tuple[Trainer, Throughput]:
    set_seed(recipe.train.seed)
    tokenizer = load_tokenizer(recipe.model.base, recipe.model.revision, recipe.data.template)
    train_ds, eval_ds = build(recipe.data, tokenizer, METHODS[recipe.train.method].unpaired)  # prints what decontamination dropped and the row counts
    place = placement(recipe.model.dtype, recipe.quant.compute_dtype)
    console.print(f"model: {escape(recipe.model.base)}, quantization {recipe.quant.bits or 'none'}, on {place.device}"
                  + (f", {world_size()} processes: effective batch {recipe.train.micro_batch_size} x "
                     f"{recipe.train.gradient_accumulation_steps} x {world_size()}" if world_size() > 1 else ""))
    model = trainable_model(recipe)
    run = RunDir(recipe.output.run_dir)
    if mutates_base(model) and is_main_process():
        save_initial_adapter(model, run.initial_adapter)
    method = METHODS[recipe.train.method]
    args = method.config(recipe, common_args(recipe), conversational="messages" in train_ds.column_names)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    throughput = Throughput()
    trainer = method.trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[throughput, MetricsLog(run, throughput), ProgressBar(throughput), DivergenceGuard(run), RecipeLearningRate(),
                   *extra_callbacks],
        **method.trainer_kwargs(recipe),
    )
    trainer.remove_callback(PrinterCallback)
    if recipe.train.method == "grpo":
        trainer.add_callback(RewardSpread(recipe.train.grpo.num_generations))
    restore_trainable(trainer.model, trainable)
    if recipe.train.pass_at_1 is not None:
        from qlcode.execution.in_training import PassAt1

        p = recipe.train.pass_at_1
        in_loop = PassAt1(p.bench, p.data, p.problems, p.every, p.max_new_tokens, tokenizer,
                          recipe.data.template == "instruct", run)
        in_loop.trainer = trainer
        trainer.add_callback(in_loop)
    return trainer, throughput


def restore_trainable(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Undo TRL's cast of QLoRA adapter weights to bf16, bit for bit.

    TRL 1.16 casts the trainable weights of any quantized model to bf16, whatever the device: on
    CPU (fp32 compute) and on GPUs without bf16 that is wrong, everywhere it rounds away small
    optimizer updates, and for DPO it makes the policy differ from TRL's fp32 copy of it used as the
    reference. We keep the fp32 master weights as they were; on GPUs the trainer's autocast still
    runs the LoRA matmuls in bf16/fp16. The optimizer is built later, in train().
    """
    for name, p in model.named_parameters():
        if name in saved:
            p.data = saved[name]


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far, as torch itself counts them
    (torch._dynamo.utils.calculate_time_spent: tracing, AOTAutograd and the backend for every forward
    frame, plus each backward graph compiled lazily on its first backward). Timed around the compiler,
    not inferred from step times, so it holds when later steps recompile (a new sequence length, the
    evaluation's no-grad graphs) and does not count a slow first step's data loading."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent()["total_wall_time"]


def _eval_loss(trainer) -> float | None:
    if trainer.eval_dataset is None:
        return None
    return trainer.evaluate().get("eval_loss")  # methods that score by reward (GRPO) have none


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """CPU arithmetic treats subnormal floats as zero while training, then as before. Subnormals take a
    slow path on CPUs: a GRPO run of the micro model fell from about 1,100 to 4-30 tokens/s after ~90
    steps without this (measured on this project's CPU machine). GPU arithmetic is not affected."""
    was_on = (torch.tensor([1e-39]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


WRITE_LIMITS = {errno.ENOSPC: "the disk is full (ENOSPC)", errno.EDQUOT: "the disk quota is used up (EDQUOT)",
                errno.EFBIG: "a file outgrew the file-size limit (EFBIG, ulimit -f)"}


def write_limit(e: BaseException) -> str | None:
    """What stopped a save when it is the disk or a size limit: OSError's errno, or the text that
    safetensors ("... (os error 28)") and torch.save ("file write failed") give in its place."""
    if isinstance(e, OSError) and e.errno in WRITE_LIMITS:
        return WRITE_LIMITS[e.errno]
    text = str(e)
    for code, what in WRITE_LIMITS.items():
        if f"(os error {code})" in text or f"[Errno {code}]" in text:
            return what
    if "file write failed" in text:  # torch.save names no cause
        return "a write failed (a full disk or a file-size limit)"
    return None


def save_size(run: RunDir, model: torch.nn.Module, optimizer: str) -> int:
    """Bytes a checkpoint of this run takes: the last one's, else the adapter and its optimizer state."""
    done = run.latest_checkpoint()
    if done is not None:
        return sum(f.stat().st_size for f in done.rglob("*") if f.is_file())
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n * (4 + (2 if "8bit" in optimizer else 8))  # fp32 weights; Adam's two moments in fp32 or 8 bits


@contextmanager
def full_disk_is_resumable(run: RunDir, trainer, optimizer: str) -> Iterator[None]:
    """A save that meets a full disk or a file-size limit ends the run with what happened, the space a
    save needs and --resume; the partial files it left are removed (they would only hold the space)."""
    try:
        yield
    except Exception as e:
        what = write_limit(e)
        if what is None:
            raise
        shutil.rmtree(run.path / ".adapter.tmp", ignore_errors=True)
        for partial in run.checkpoints.glob("checkpoint-*"):
            if not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
        need, free = save_size(run, trainer.model, optimizer), shutil.disk_usage(run.path).free
        raise RunStopped(f"{what} while saving to {run.path}: a save needs about {need / 2**20:,.1f} MiB and "
                         f"{free / 2**20:,.0f} MiB are free there; every complete checkpoint is kept: make room "
                         "(or raise the limit) and continue with --resume") from None


def train(recipe: Recipe, resume: bool = False, extra_callbacks: list[TrainerCallback] = ()) -> RunResult:
    """Run the recipe; with resume, continue from the newest complete checkpoint."""
    run = RunDir(recipe.output.run_dir)
    main = is_main_process()
    with run.lock() if main else nullcontext(), subnormals_flushed(), tracked(recipe) if main else nullcontext() as tracker:
        checkpoint = run.prepare(resume) if main else (run.latest_checkpoint() if resume else None)
        if main and resume and checkpoint is None:
            console.print(f"no complete checkpoint in {escape(str(run.checkpoints))}: starting from step 0")
        trainer, throughput = build_trainer(recipe, extra_callbacks)  # bad data stops here, before the run is written
        if main:
            run.start(recipe, checkpoint)
        start, compiled = time.perf_counter(), compile_seconds()
        before = next((r["eval_loss"] for r in run.metrics() if r["step"] == 0 and "eval_loss" in r), None)
        if checkpoint is None:
            before = _eval_loss(trainer) if can_evaluate_before_training(trainer) else None  # logged to metrics.jsonl as step 0
            wrap_again_after_evaluation(trainer)
        with full_disk_is_resumable(run, trainer, recipe.train.optimizer):
            if checkpoint is not None and is_final(checkpoint):
                # killed during the final save: the weights are the checkpoint's, no step is left to train
                trainer._load_from_checkpoint(str(checkpoint))
                trainer.state.global_step = checkpoint_step(checkpoint)
                train_loss = None
            else:
                output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
                if trainer.control.should_training_stop and trainer.state.global_step < trainer.state.max_steps:
                    raise RunStopped(f"training stopped at step {trainer.state.global_step}; continue with --resume")
                train_loss = output.training_loss if math.isfinite(output.training_loss) else None
            after = _eval_loss(trainer)
            rates = [r["tokens_per_s"] for r in run.metrics() if r.get("tokens_per_s")]
            result = RunResult(
                run_dir=str(run),
                steps=trainer.state.global_step,
                seconds=time.perf_counter() - start,
                # a run resumed at its last step trained nothing now: its rate is the one it logged
                tokens_per_s=throughput.mean_tokens_per_s or (sum(rates) / len(rates) if rates else None),
                peak_memory_gb=peak_memory_gb(),
                eval_loss_before=before,
                eval_loss_after=after,
                train_loss=train_loss,
                compile_seconds=compile_seconds() - compiled if recipe.train.compile else None,
            )
            adapter = gathered_adapter(trainer.model)  # every rank: FSDP and ZeRO-3 gather the adapter's shards
            if main:
                run.save_adapter(trainer.model, trainer.processing_class, recipe.model.base, adapter_card(recipe, asdict(result)), adapter,
                                 initial=run.initial_adapter if mutates_base(trainer.model) else None)
                run.write_summary(asdict(result))
                if tracker is not None:
                    tracker.log_adapter(run.path)
        if main and recipe.hub.push:
            _push(recipe)
        trainer.accelerator.wait_for_everyone()  # the other ranks end when the adapter is complete
    return result


def _push(recipe: Recipe) -> None:
    from qlcode.export.push import push

    run_dir, repo = recipe.output.run_dir, recipe.hub.repo_id
    try:
        report = push(run_dir, repo, private=recipe.hub.private)
    except QlcodeError as e:
        raise QlcodeError(f"{e}; the adapter is saved in {run_dir}: push it later with  qlcode push {run_dir} --repo {repo}") from None
    console.print(f"pushed {len(report.files)} files to {report.commit_url}")
