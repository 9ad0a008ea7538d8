"""One training run: recipe -> model and data -> TRL trainer -> adapters/<name>/.

Run directory layout:
    recipe.yaml          the resolved recipe (every default filled in)
    metrics.jsonl        one JSON object per log event; step 0 holds the eval loss before training
    checkpoints/         checkpoint-N/ every train.save_steps, the last train.keep_checkpoints kept
    adapter_config.json  the final PEFT adapter, tokenizer and README.md model card, moved in
    adapter_model.safetensors   from a temporary directory when training ends, weights last
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from qlcode.callbacks import MetricsLog, ProgressBar, Throughput, console, peak_memory_gb, read_metrics
from qlcode.data import build_datasets
from qlcode.data.decontaminate import drop_overlapping, index
from qlcode.data.fim import with_infilling
from qlcode.errors import QlcodeError
from qlcode.files import move_files_into, write_text_atomic
from qlcode.model_card import adapter_card
from qlcode.models import load_base, load_tokenizer, placement, with_lora
from qlcode.recipe import Recipe

ADAPTER_WEIGHTS = "adapter_model.safetensors"


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


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint; the trainer writes trainer_state.json last."""
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _prepare_run_dir(recipe: Recipe, resume: bool) -> Path | None:
    """Check the run directory against --resume; returns the checkpoint to resume from, if any."""
    run_dir = recipe.output.run_dir
    checkpoints = run_dir / "checkpoints"
    if (run_dir / ADAPTER_WEIGHTS).exists():
        raise QlcodeError(f"{run_dir} already holds a finished adapter; pick another name (output.name=...) or delete it")
    ckpt = latest_checkpoint(checkpoints) if checkpoints.is_dir() else None
    if not resume and (ckpt is not None or (run_dir / "metrics.jsonl").exists()):
        raise QlcodeError(f"{run_dir} holds an unfinished run; continue it with --resume, or delete it to start over")
    if resume and ckpt is None:
        console.print(f"no complete checkpoint in {checkpoints}: starting from step 0")
    return ckpt


def _precision(recipe: Recipe) -> dict:
    place = placement(recipe.model, recipe.quant)
    if place.device.type != "cuda":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"bf16": place.compute_dtype == torch.bfloat16, "fp16": place.compute_dtype == torch.float16}


def _check_tracker(name: str) -> None:
    if name != "none" and importlib.util.find_spec(name) is None:
        raise QlcodeError(f"train.report_to: {name} is not installed; pip install {name}, or set train.report_to: none")


def trainer_args(recipe: Recipe, conversational: bool) -> SFTConfig | DPOConfig:
    t, data = recipe.train, recipe.data
    _check_tracker(t.report_to)
    common = dict(
        output_dir=str(recipe.output.run_dir / "checkpoints"),
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
        eval_strategy="steps" if t.eval_steps else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.keep_checkpoints,
        logging_steps=t.logging_steps,
        report_to=[] if t.report_to == "none" else [t.report_to],
        seed=t.seed,
        data_seed=t.seed,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        max_length=data.max_length,
        **_precision(recipe),
    )
    if t.method == "dpo":
        return DPOConfig(**common, beta=t.dpo_beta, loss_type=list(t.dpo_loss))
    return SFTConfig(
        **common,
        packing=data.packing,
        # repository rows are longer than max_length: split them into pieces instead of truncating
        packing_strategy="bfd_split" if any(d.format == "repository" for d in data.datasets) else "bfd",
        completion_only_loss=data.train_on_completions_only,
        assistant_only_loss=data.train_on_completions_only and conversational,
        neftune_noise_alpha=t.neftune_noise_alpha,
    )


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint: the resumed run writes them again."""
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def build_trainer(recipe: Recipe, extra_callbacks: list[TrainerCallback] = ()) -> tuple[SFTTrainer | DPOTrainer, Throughput]:
    set_seed(recipe.train.seed)
    tokenizer = load_tokenizer(recipe.model, recipe.data.template)
    train_ds, eval_ds = build_datasets(recipe.data)
    if recipe.data.decontaminate:
        train_ds, dropped = drop_overlapping(train_ds, index(recipe.data.decontaminate))
        console.print(f"decontamination: dropped {len(dropped)} training rows sharing a 13-gram with "
                      f"{', '.join(recipe.data.decontaminate)}" + (f" (e.g. {dropped[0][1]})" if dropped else ""))
    console.print(f"data: {len(train_ds)} training rows, {len(eval_ds) if eval_ds else 0} validation rows")
    console.print(f"model: {recipe.model.base}, quantization {recipe.quant.bits or 'none'}, on {placement(recipe.model, recipe.quant).device}")
    if recipe.data.fim is not None:
        train_ds = with_infilling(train_ds, tokenizer, recipe.data.fim, recipe.data.seed)
    model = with_lora(load_base(recipe.model, recipe.quant), recipe)
    args = trainer_args(recipe, conversational="messages" in train_ds.column_names)
    cls = DPOTrainer if recipe.train.method == "dpo" else SFTTrainer
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    throughput = Throughput()
    metrics = MetricsLog(recipe.output.run_dir / "metrics.jsonl", throughput)
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[throughput, metrics, ProgressBar(throughput), *extra_callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    restore_trainable(trainer.model, trainable)
    if recipe.train.pass_at_1 is not None:
        from qlcode.execution.in_training import PassAt1

        in_loop = PassAt1(recipe.train.pass_at_1, tokenizer, recipe.data.template == "codellama-instruct", recipe.output.run_dir)
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


def _eval_loss(trainer) -> float | None:
    if trainer.eval_dataset is None:
        return None
    return trainer.evaluate()["eval_loss"]


def _save_adapter(trainer, recipe: Recipe, summary: dict) -> None:
    run_dir = recipe.output.run_dir
    tmp = run_dir / ".adapter.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(tmp, selected_adapters=["default"])
    config = json.loads((tmp / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = recipe.model.base  # the recipe's name, not a local cache path
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    trainer.processing_class.save_pretrained(tmp)
    (tmp / "README.md").write_text(adapter_card(recipe, summary))
    move_files_into(tmp, run_dir, last=ADAPTER_WEIGHTS)


def train(recipe: Recipe, resume: bool = False, extra_callbacks: list[TrainerCallback] = ()) -> RunResult:
    """Run the recipe; with resume, continue from the newest complete checkpoint."""
    run_dir = recipe.output.run_dir
    checkpoint = _prepare_run_dir(recipe, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    metrics_path = run_dir / "metrics.jsonl"
    if checkpoint is not None:
        _trim_metrics(metrics_path, int(checkpoint.name.split("-")[1]))
    elif metrics_path.exists():
        metrics_path.unlink()

    trainer, throughput = build_trainer(recipe, extra_callbacks)
    start = time.perf_counter()
    before = next((r["eval_loss"] for r in read_metrics(metrics_path) if r["step"] == 0 and "eval_loss" in r), None)
    if checkpoint is None:
        before = _eval_loss(trainer)  # logged to metrics.jsonl as step 0
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.control.should_training_stop and trainer.state.global_step < trainer.state.max_steps:
        raise QlcodeError(f"training stopped at step {trainer.state.global_step}; continue with --resume")
    after = _eval_loss(trainer)
    result = RunResult(
        run_dir=str(run_dir),
        steps=trainer.state.global_step,
        seconds=time.perf_counter() - start,
        tokens_per_s=throughput.mean_tokens_per_s,
        peak_memory_gb=peak_memory_gb(),
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss=output.training_loss if math.isfinite(output.training_loss) else None,
    )
    _save_adapter(trainer, recipe, asdict(result))
    write_text_atomic(run_dir / "summary.json", json.dumps(asdict(result), indent=2) + "\n")
    if recipe.hub.push:
        _push(recipe)
    return result


def _push(recipe: Recipe) -> None:
    from qlcode.export.push import push

    run_dir, repo = recipe.output.run_dir, recipe.hub.repo_id
    try:
        report = push(run_dir, repo, private=recipe.hub.private)
    except QlcodeError as e:
        raise QlcodeError(f"{e}\nthe adapter is saved in {run_dir}; push it later with  qlcode push {run_dir} --repo {repo}") from None
    console.print(f"pushed {len(report.files)} files to {report.commit_url}")
