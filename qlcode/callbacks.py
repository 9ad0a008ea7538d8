"""Trainer callbacks: a progress bar people can read, and metrics.jsonl that programs can read.

Both belong to the main process: under a launcher the other ranks train without writing.
"""

from __future__ import annotations

import time

from rich.progress import Progress
from transformers import TrainerCallback

from qlcode.ranks import is_main_process
from qlcode.progress import peak_memory_gb, progress_bar
from qlcode.runs import RunDir, metrics_row


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
    """One bar over optimizer steps with loss, tokens/s, elapsed time and ETA."""

    def __init__(self, throughput: Throughput) -> None:
        self.throughput = throughput
        self.progress: Progress | None = None
        self.task = None
        self.fields = {"loss": "-", "tps": "-", "reward": ""}

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
