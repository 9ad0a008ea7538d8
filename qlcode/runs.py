"""A run directory: its layout, whether it is finished, its lock, its checkpoints and its final save.

    adapters/<name>/
      recipe.yaml          the resolved recipe (every default filled in)
      world.json           the number of processes the run was started with (--resume compares)
      metrics.jsonl        one JSON object per log event; step 0 holds the eval loss before training
      checkpoints/         checkpoint-N/ every train.save_steps (the trainer writes trainer_state.json last)
      best/                the best adapter by in-training pass@1, with best.json
      lora_init/           a PiSSA/OLoRA adapter as initialised (lora.init), for the conversion at the final save
      diverged/            checkpoints written after the last finite loss of a run that diverged
      adapter_config.json  the final PEFT adapter, tokenizer and README.md model card, moved in
      adapter_model.safetensors   from a temporary directory when training ends, weights last
      summary.json         steps, time, tokens/s, peak memory, eval loss before and after, compile time
      .qlcode.lock         held (flock) by the process training in it

Every module that reads or writes a run asks this one: a directory is finished exactly when its
adapter weights are there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import QlcodeError, RecipeError
from qlcode.files import move_files_into, write_text_atomic
from qlcode.ranks import world_size
from qlcode.recipe import Recipe, read_run_recipe

WEIGHTS = "adapter_model.safetensors"
LOCK = ".qlcode.lock"
WORLD = "world.json"  # how many processes train the run: --resume compares
# keys of a trainer log event that metrics.jsonl keeps
LOGGED = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "rewards/accuracies", "rewards/margins", "pass@1",
          "reward", "reward_std", "frac_reward_zero_std", "pass_rate", "timeouts", "kl", "judged_outside",
          "reward/visible_pass", "reward/hidden_pass")


class RunStopped(QlcodeError):
    """A run that stopped unfinished, its checkpoints intact: --resume continues it (the CLI prints the command)."""


def metrics_row(step: int, logs: dict) -> dict | None:
    """The metrics.jsonl row of a trainer log event, or None when it holds no measurement."""
    row = {k: v for k, v in logs.items() if k in LOGGED}
    return {"step": step, **row} if set(row) - {"epoch"} else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def is_final(checkpoint: Path) -> bool:
    """Whether the checkpoint is the last step's: training ended and only the final save can be missing."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"] > 0


class RunDir:
    """One run's directory and the rules for its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe_path = self.path / "recipe.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.weights = self.path / WEIGHTS
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def finished(self) -> bool:
        return self.weights.is_file()

    def is_run(self) -> bool:
        """Whether qlcode made this directory: it holds a run's recipe, lock or checkpoints."""
        return self.recipe_path.is_file() or (self.path / LOCK).is_file() or self.checkpoints.is_dir()

    def recipe(self) -> Recipe:
        return read_run_recipe(self.recipe_path)

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else {}

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def require_adapter(self, what: str = "--adapter") -> None:
        if not (self.path / "adapter_config.json").is_file() or not self.finished:
            raise QlcodeError(f"{what}: {self.path} holds no finished adapter (a finished run directory has "
                              f"adapter_config.json and {WEIGHTS})")

    def recorded_world_size(self) -> int | None:
        """The number of processes the run was last started with (None for a run not started yet)."""
        path = self.path / WORLD
        return json.loads(path.read_text())["world_size"] if path.is_file() else None

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint; the trainer writes trainer_state.json last."""
        done = [p for p in self.checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=checkpoint_step, default=None)

    def check_writable(self) -> None:
        """Never train into a file, or into a directory of other things (a project root, adapters/)."""
        if self.path.exists() and not self.path.is_dir():
            raise RecipeError(f"output.dir: {self.path} is a file; name a directory (or unset output.dir for adapters/<name>)")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.is_run():
            raise RecipeError(f"output.dir: {self.path} is not empty and holds no qlcode run; training would write "
                              "over its files: choose a new or empty directory")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock while training: a second run into the same directory is refused.

        flock is released by the kernel when its process dies, so the lock of a killed run is never
        stale; the file keeps the last holder's pid and start time for the message.
        """
        self.check_writable()
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise QlcodeError(f"{self.path} is in use by a run in progress ({holder}); wait for it to end, "
                                  "or train into another directory (output.name=...)") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
            yield
        except BaseException:
            if made and [p.name for p in self.path.iterdir()] == [LOCK]:
                shutil.rmtree(self.path)  # a run that failed before writing anything leaves nothing
            raise
        finally:
            os.close(fd)  # releases the flock

    def prepare(self, resume: bool) -> Path | None:
        """Check the directory against --resume (under the lock); returns the checkpoint to resume from."""
        if self.finished:
            raise QlcodeError(f"{self.path} already holds a finished adapter; pick another name (output.name=...) or delete it")
        ckpt = self.latest_checkpoint()
        if not resume and (ckpt is not None or self.metrics_path.exists()):
            raise QlcodeError(f"{self.path} holds an unfinished run; continue it with --resume, or delete it to start over")
        return ckpt

    def start(self, recipe: Recipe, checkpoint: Path | None) -> None:
        """Write the recipe; keep exactly the metrics rows the checkpoint had seen (a resumed run writes the rest again)."""
        write_text_atomic(self.recipe_path, recipe.to_yaml())
        write_text_atomic(self.path / WORLD, json.dumps({"world_size": world_size()}) + "\n")
        if checkpoint is None:
            self.metrics_path.unlink(missing_ok=True)
            return
        step = checkpoint_step(checkpoint)
        history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
        at_step = sum(1 for e in history if e.get("step") == step and metrics_row(step, e))
        kept = []
        for row in self.metrics():
            if row["step"] < step or (row["step"] == step and at_step > 0):
                at_step -= row["step"] == step
                kept.append(row)
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def append_metrics(self, row: dict) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:  # one line per write: a kill leaves whole rows
            f.write(json.dumps(row) + "\n")

    @property
    def initial_adapter(self) -> Path:
        """A PiSSA/OLoRA adapter as initialised (lora.init), which converts the trained one to a plain LoRA."""
        return self.path / "lora_init"

    def save_adapter(self, model, tokenizer, base: str, card: str, state_dict: dict | None = None,
                     initial: Path | None = None) -> None:
        """Write the final adapter beside the run's files atomically: weights last, so a directory
        without them is unfinished. state_dict: the adapter's weights gathered from sharded ranks;
        initial: the PiSSA/OLoRA adapter as initialised, to save the trained one as a plain LoRA of twice
        the rank on the unchanged base (PEFT's path_initial_model_for_weight_conversion)."""
        tmp = self.path / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, selected_adapters=["default"], state_dict=state_dict,
                              path_initial_model_for_weight_conversion=str(initial) if initial else None)
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base  # the recipe's name, not a local cache path
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card)
        move_files_into(tmp, self.path, last=WEIGHTS)

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.summary_path, json.dumps(summary, indent=2) + "\n")


@dataclass
class Run:
    name: str
    path: str
    base: str
    method: str
    status: str  # finished | unfinished
    steps: int | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    date: str


def list_runs(root: Path = Path("adapters")) -> list[Run]:
    runs = []
    for path in sorted(p for p in root.iterdir() if (p / "recipe.yaml").is_file()) if root.is_dir() else []:
        d = RunDir(path)
        try:
            recipe = d.recipe()
        except RecipeError:
            continue
        summary = d.summary()
        stamp = (d.weights if d.finished else d.recipe_path).stat().st_mtime
        runs.append(Run(d.path.name, str(d.path), recipe.model.base, recipe.train.method,
                        "finished" if d.finished else "unfinished", summary.get("steps"),
                        summary.get("eval_loss_before"), summary.get("eval_loss_after"),
                        time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))))
    return runs
