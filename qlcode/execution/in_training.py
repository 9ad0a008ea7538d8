"""pass@1 during training: a callback that runs a benchmark subset in the sandbox every N steps.

The score is logged (metrics.jsonl) and the best adapter by it is kept in `<run>/best/`, written
to a temporary directory and renamed, with `best.json` saying at which step and what score. Only
the main process scores and writes; under a launcher the other ranks skip it.
"""

from __future__ import annotations

import json
import shutil

from transformers import TrainerCallback

from qlcode.execution.benchmarks import load
from qlcode.execution.evaluate import execute, summarize
from qlcode.execution.engines.batched import TransformersEngine
from qlcode.execution.generate import in_order, sample
from qlcode.files import write_text_atomic
from qlcode.ranks import is_main_process
from qlcode.runs import RunDir


class PassAt1(TrainerCallback):
    def __init__(self, bench: str, data: str | None, problems: int, every: int, max_new_tokens: int, tokenizer,
                 instruct: bool, run: RunDir) -> None:
        self.bench, self.every, self.max_new_tokens = bench, every, max_new_tokens
        self.tokenizer, self.instruct, self.run = tokenizer, instruct, run
        self.problems = load(bench, data, problems)
        kept = run.best / "best.json"  # a resumed run keeps competing with the best so far
        self.best: float | None = json.loads(kept.read_text())["pass@1"] if kept.is_file() else None
        self.trainer = None  # set by train(): logging goes through the trainer so every callback sees it

    def score(self, model) -> float:
        was_training = model.training
        model.eval()
        try:
            engine = TransformersEngine(model, self.tokenizer)
            completions = in_order(sample(engine, self.problems, self.instruct, 1, 0.0, self.max_new_tokens))
            results = execute(self.problems, completions, show_progress=False)
        finally:
            model.train(was_training)
        return summarize(results, [1])["pass@1"]

    def _run(self, state, model) -> None:
        if not is_main_process():
            return
        value = self.score(model)
        self.trainer.log({"pass@1": value})
        if self.best is None or value > self.best:
            self.best = value
            tmp, best = self.run.path / ".best.tmp", self.run.best
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, selected_adapters=["default"])
            write_text_atomic(tmp / "best.json", json.dumps({"step": state.global_step, "pass@1": value,
                                                              "bench": self.bench, "problems": len(self.problems)}) + "\n")
            shutil.rmtree(best, ignore_errors=True)
            tmp.rename(best)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every == 0:
            self._run(state, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every != 0:
            self._run(state, model)
