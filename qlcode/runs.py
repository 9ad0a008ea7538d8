"""The runs under adapters/: what each one is, for `qlcode adapters list`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import RecipeError
from qlcode.recipe import read_run_recipe


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
    for d in sorted(p for p in root.iterdir() if (p / "recipe.yaml").is_file()) if root.is_dir() else []:
        try:
            recipe = read_run_recipe(d / "recipe.yaml")
        except RecipeError:
            continue
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
        weights = d / "adapter_model.safetensors"
        stamp = (weights if weights.is_file() else d / "recipe.yaml").stat().st_mtime
        runs.append(Run(d.name, str(d), recipe.model.base, recipe.train.method,
                        "finished" if weights.is_file() else "unfinished", summary.get("steps"),
                        summary.get("eval_loss_before"), summary.get("eval_loss_after"),
                        time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))))
    return runs
