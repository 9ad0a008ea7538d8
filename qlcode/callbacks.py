"""Trainer callbacks: a progress bar people can read, and metrics.jsonl that programs can read."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

console = Console(stderr=True)
LOGGED = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "rewards/accuracies", "rewards/margins", "pass@1")


def progress_bar(label: str, *fields: str, show: bool = True) -> Progress:
    """The one progress bar style of qlcode: label, bar, n/total, the given fields, elapsed, ETA."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show)


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch on CUDA; peak resident memory of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


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
    """Appends one JSON object per log event to metrics.jsonl (flushed, so a kill loses nothing logged)."""

    def __init__(self, path: Path, throughput: Throughput) -> None:
        self.path = path
        self.throughput = throughput

    def write(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_log(self, args, state, control, logs=None, **kw):
        row = {"step": state.global_step, **{k: v for k, v in (logs or {}).items() if k in LOGGED}}
        if len(row) == 1:
            return
        if "loss" in row:
            row["tokens_per_s"] = self.throughput.tokens_per_s
            row["peak_memory_gb"] = round(peak_memory_gb(), 3)
        self.write(row)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ProgressBar(TrainerCallback):
    """One bar over optimizer steps with loss, tokens/s, elapsed time and ETA."""

    def __init__(self, throughput: Throughput) -> None:
        self.throughput = throughput
        self.progress: Progress | None = None
        self.task = None
        self.fields = {"loss": "-", "tps": "-"}

    def on_train_begin(self, args, state, control, **kw):
        self.progress = progress_bar("train", "loss {task.fields[loss]}", "{task.fields[tps]} tok/s")
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, **self.fields)

    def on_step_end(self, args, state, control, **kw):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is None or "loss" not in (logs or {}):
            return
        self.fields["loss"] = f"{logs['loss']:.4f}"
        if self.throughput.tokens_per_s:
            self.fields["tps"] = f"{self.throughput.tokens_per_s:,.0f}"
        self.progress.update(self.task, **self.fields)

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None
