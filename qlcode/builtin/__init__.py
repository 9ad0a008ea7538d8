"""Things that ship inside the package so qlcode runs with no Hub: the micro model and datasets.

`builtin:NAME` in a recipe resolves here.
"""

from __future__ import annotations

from pathlib import Path

from qlcode.errors import QlcodeError

HERE = Path(__file__).parent
MODELS = {"micro-codellama": HERE / "micro-codellama"}
DATASETS = {
    "stdlib-python-instruct": HERE / "data" / "stdlib-python-instruct.jsonl.gz",
    "stdlib-doctests": HERE / "data" / "stdlib-doctests.jsonl.gz",  # a benchmark, not training data
    "python-basics": HERE / "data" / "python-basics.jsonl.gz",  # problems with asserts: train and held-out test split
}

# Standard-library modules kept out of the micro model's pretraining corpus; functions from them
# form the held-out split of builtin:stdlib-python-instruct.
HELD_OUT_MODULES = (
    "bisect", "calendar", "colorsys", "difflib", "fractions", "heapq", "ipaddress", "json",
    "shlex", "statistics", "string", "textwrap",
)


def _resolve(kind: str, table: dict[str, Path], spec: str) -> Path:
    name = spec.removeprefix("builtin:")
    if name not in table:
        raise QlcodeError(f"unknown builtin {kind} {spec!r}; builtin {kind}s: " + ", ".join(f"builtin:{n}" for n in table))
    return table[name]


def model_path(spec: str) -> Path:
    return _resolve("model", MODELS, spec)


def dataset_path(spec: str) -> Path:
    return _resolve("dataset", DATASETS, spec)
