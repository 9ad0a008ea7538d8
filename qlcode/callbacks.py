"""Trainer callbacks: a progress bar people can read, metrics.jsonl that programs can read, and the
guards that stop a run going wrong (a loss that is no longer a number).

The bar and the metrics belong to the main process: under a launcher the other ranks train without writing.
"""

from __future__ import annotations

import math
import os
import shutil
import time

import torch
from rich.progress import Progress
from transformers import TrainerCallback

from qlcode.ranks import is_main_process
from qlcode.progress import console, peak_memory_gb, progress_bar
from qlcode.runs import RunDir, RunStopped, checkpoint_step, metrics_row


class Throughput(TrainerCallback):
    """Tokens per second between log events, from the trainer's own count of input tokens."""

    def __init__(self) -> None:
        self.mark: tuple[float, int] | None = None
        self.tokens_per_s: float | None = None
        self.train_tokens = 0
        self.train_seconds = 0.0

    def on_step_begin(self, args, state, control, **kw):
        if self.mark is None:
            self.mark = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.mark is None or "loss" not in (logs or {}):
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        dt, dn = now - self.mark[0], tokens - self.mark[1]
        self.train_tokens += dn
        self.train_seconds += dt
        self.tokens_per_s = dn / dt if dt > 0 and dn > 0 else None
        self.mark = (now, tokens)

    def on_evaluate(self, args, state, control, **kw):
        self.mark = None  # evaluation time is not training time

    @property
    def mean_tokens_per_s(self) -> float | None:
        return self.train_tokens / self.train_seconds if self.train_seconds and self.train_tokens else None


class MetricsLog(TrainerCallback):
    """Appends one JSON object per log event to the run's metrics.jsonl (main process only)."""

    def __init__(self, run: RunDir, throughput: Throughput) -> None:
        self.run = run
        self.throughput = throughput

    def on_log(self, args, state, control, logs=None, **kw):
        row = metrics_row(state.global_step, logs or {})
        if row is None or not is_main_process():
            return
        if "loss" in row:
            row["tokens_per_s"] = self.throughput.tokens_per_s
            row["peak_memory_gb"] = round(peak_memory_gb(), 3)
        self.run.append_metrics(row)


class ProgressBar(TrainerCallback):
    """One bar over optimizer steps with loss, tokens/s, elapsed time and ETA; one over evaluation batches
    (evaluation before training on a large validation set takes minutes)."""

    def __init__(self, throughput: Throughput) -> None:
        self.throughput = throughput
        self.progress: Progress | None = None
        self.task = None
        self.fields = {"loss": "-", "tps": "-", "reward": ""}
        self.eval: tuple[Progress, object] | None = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
        if self.eval is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            blank = {"loss": "", "tps": "-", "reward": ""}
            if self.progress is not None:  # one live display at a time: a second task on the training bar's display
                self.eval = (self.progress, self.progress.add_task("eval", total=total, **blank))
            else:
                bar = progress_bar("eval", "{task.fields[loss]}", "{task.fields[tps]} tok/s", "{task.fields[reward]}")
                bar.start()
                self.eval = (bar, bar.add_task("eval", total=total, **blank))
        self.eval[0].advance(self.eval[1])

    def on_evaluate(self, args, state, control, **kw):
        if self.eval is not None:
            bar, task = self.eval
            if bar is self.progress:
                bar.remove_task(task)
            else:
                bar.stop()
            self.eval = None

    def on_train_begin(self, args, state, control, **kw):
        self.progress = progress_bar("train", "loss {task.fields[loss]}", "{task.fields[tps]} tok/s", "{task.fields[reward]}")
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, **self.fields)

    def on_step_end(self, args, state, control, **kw):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is None or "loss" not in (logs or {}):
            return
        self.fields["loss"] = f"{logs['loss']:.4f}"
        if "reward" in logs:  # methods that learn from rewards (GRPO)
            self.fields["reward"] = f"reward {logs['reward']:.3f}"
        if self.throughput.tokens_per_s:
            self.fields["tps"] = f"{self.throughput.tokens_per_s:,.0f}"
        self.progress.update(self.task, **self.fields)

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class Diverged(RunStopped):
    """The loss or the weights stopped being finite numbers: nothing after this trains."""


def weights_finite(model) -> bool:
    """Whether every trainable weight is a finite number: one device sync over the adapter, at a save or a bad log."""
    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(flags).all()) if flags else True


class DivergenceGuard(TrainerCallback):
    """Stops a run whose loss, gradient norm or weights become NaN or infinite, naming the step and the likely cause.

    It reads what the trainer logs anyway (the loss and grad_norm every train.logging_steps, which
    the trainer already synchronises for) and checks the adapter's weights only before a checkpoint
    is written or when a log looks wrong, so it adds no device sync to an ordinary step. A checkpoint
    is never written with weights that are not finite; checkpoints written after the last finite
    logged loss (weights not yet shown to give a finite loss) are moved to <run>/diverged/, so that
    --resume starts from the last good one. A non-finite gradient norm with finite weights is a step
    that changed nothing (fp16's gradient scaler skips it while it finds its scale; clipping zeroes
    it otherwise), and so is a non-finite loss under fp16: they stop the run only when they last.
    """

    PATIENCE = 10  # logs in a row that changed nothing; the scaler halves its scale at each overflow from 2**16

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.finite_through = 0  # weights after this step gave a finite loss (or are where training started)
        self.last_log = 0
        self.streak = 0

    def on_train_begin(self, args, state, control, **kw):
        self.finite_through = self.last_log = state.global_step

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return
        bad = {k: logs[k] for k in ("loss", "grad_norm") if k in logs and not math.isfinite(logs[k])}
        window = (self.last_log + 1, state.global_step)
        self.last_log = state.global_step
        if not bad:
            self.streak = 0
            self.finite_through = state.global_step - 1  # the last step's loss was computed with the weights before it
            return
        self.streak += 1
        finite = weights_finite(model)
        if finite and self.streak < self.PATIENCE and (args.fp16 or "loss" not in bad):
            return  # a step that changed nothing
        what = " and ".join(f"the {'gradient norm' if k == 'grad_norm' else k} is {v}" for k, v in bad.items())
        steps = f"step {window[1]}" if window[0] == window[1] else f"steps {window[0]}-{window[1]} (logged every {args.logging_steps})"
        self._stop(args, f"{what} in {steps}" + ("" if finite else ", and the adapter's weights are no longer finite"))

    def on_step_end(self, args, state, control, model=None, **kw):
        if control.should_save and not weights_finite(model):
            self._stop(args, f"the adapter's weights are no longer finite numbers at step {state.global_step}")

    def _stop(self, args, what: str) -> None:
        moved = self._set_aside_suspect_checkpoints() if is_main_process() else []
        good = self.run.latest_checkpoint()
        causes = [f"the learning rate is too high (train.learning_rate {args.learning_rate:g})"]
        if args.fp16:
            causes.append("fp16 overflows (set model.dtype: bf16 on a GPU that has it, or fp32)")
        causes.append("rows that give no loss (check the data)")
        aside = f" (moved {', '.join(moved)}, written after the last finite loss, to {self.run.path / 'diverged'})" if moved else ""
        kept = (f"the last good checkpoint is {good}: continue from it with --resume and a lower train.learning_rate"
                if good is not None else "no good checkpoint was written: run again with --resume (from step 0) and a lower train.learning_rate")
        raise Diverged(f"training diverged: {what}; likely cause: {' or '.join(causes)}; the run is not finished{aside}; {kept}")

    def _set_aside_suspect_checkpoints(self) -> list[str]:
        moved = []
        for ckpt in sorted(self.run.checkpoints.glob("checkpoint-*"), key=checkpoint_step):
            if checkpoint_step(ckpt) > self.finite_through:
                dest = self.run.path / "diverged" / ckpt.name
                dest.parent.mkdir(exist_ok=True)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(ckpt, dest)
                moved.append(ckpt.name)
        return moved


class RecipeLearningRate(TrainerCallback):
    """A resumed run trains at the recipe's learning rate, not the checkpoint's.

    The trainer restores the learning-rate scheduler's base rates from the checkpoint, so resuming a
    run that diverged with a lower train.learning_rate would silently keep the old one; here the
    schedule keeps its shape (warmup, decay) and takes the recipe's peak rate.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        if all(b == args.learning_rate for b in lr_scheduler.base_lrs):
            return
        console.print(f"learning rate: {args.learning_rate:g} from the recipe (the checkpoint was written at "
                      f"{lr_scheduler.base_lrs[0]:g})", highlight=False)
        lr_scheduler.base_lrs = [args.learning_rate] * len(lr_scheduler.base_lrs)
        for group, factor in zip(optimizer.param_groups, lr_scheduler.lr_lambdas):
            group["initial_lr"] = args.learning_rate
            group["lr"] = args.learning_rate * factor(lr_scheduler.last_epoch)
        lr_scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class RewardSpread(TrainerCallback):
    """Warns once, after the first AFTER steps, when most of GRPO's groups got one reward for every completion.

    GRPO learns from the differences between the rewards of a prompt's completions; a group whose
    completions all pass (or all fail) adds nothing, and when every group is so the loss is 0 at
    every step. It reads the share TRL logs (frac_reward_zero_std) and adds no work to a step.
    """

    AFTER = 10  # steps
    SHARE = 0.5  # warn at this share of groups without reward spread, or more

    def __init__(self, generations: int) -> None:
        self.generations = generations
        self.shares: list[float] = []
        self.rewards: list[float] = []
        self.first: int | None = None
        self.done = False

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if self.done or "frac_reward_zero_std" not in logs:
            return
        self.first = state.global_step if self.first is None else self.first
        self.shares.append(logs["frac_reward_zero_std"])
        self.rewards.append(logs.get("reward", float("nan")))
        if state.global_step - self.first + 1 < min(self.AFTER, state.max_steps - self.first + 1):
            return
        self.done = True
        share, reward = sum(self.shares) / len(self.shares), sum(self.rewards) / len(self.rewards)
        if share < self.SHARE:
            return
        if reward <= 0.05:
            hint = ("no completion passes its tests: check that the tests pass on a known solution, or start from an "
                    "adapter that solves some (lora.adapter) or from easier problems")
        elif reward >= 0.95:
            hint = "every completion passes: give it harder problems"
        else:
            hint = "raise train.grpo.temperature or train.grpo.num_generations for more varied completions"
        console.print(f"warning: GRPO, steps {self.first}-{state.global_step}: in {share:.0%} of the groups of "
                      f"{self.generations} completions every completion got the same reward (mean reward {reward:.2f}); "
                      f"such a group teaches nothing: {hint}", markup=False, highlight=False)
