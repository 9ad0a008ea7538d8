"""Decontamination: find training rows that share a 13-gram with a benchmark's prompts or solutions.

Text is split into word and punctuation tokens, so a solution copied with other whitespace or
line breaks still matches. Benchmarks: `humaneval` (prompts and canonical solutions) and `mbpp`
(every problem outside its train split, task_id 1-600: text, code and tests), from the Hub or from
a local copy written `mbpp:PATH`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from datasets import Dataset

from qlcode.data.formats.base import row_text
from qlcode.errors import QlcodeError

N = 13
TOKEN = re.compile(r"\w+|[^\w\s]")


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    tokens = TOKEN.findall(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def benchmark_texts(names: Iterable[str]) -> list[tuple[str, str]]:
    """(task_id, text) for every problem of the named benchmarks."""
    from qlcode.execution.benchmarks import mbpp_rows, humaneval

    out = []
    for name in names:
        if name == "humaneval":
            out += [(p.task_id, p.prompt + p.reference) for p in humaneval()]
        elif name == "mbpp" or name.startswith("mbpp:"):
            path = name.partition(":")[2] or None
            rows = mbpp_rows(path, "") if path else [r for split in ("prompt", "test", "validation") for r in mbpp_rows(None, split)]
            out += [(f"MBPP/{r['task_id']}", "\n".join([r["text"], r["code"], *r["test_list"]]))
                    for r in rows if int(r["task_id"]) <= 600]
        else:
            raise QlcodeError(f"unknown benchmark {name!r} to decontaminate against: humaneval, mbpp or mbpp:PATH")
    return out


def index(names: Iterable[str]) -> dict[tuple[str, ...], str]:
    grams: dict[tuple[str, ...], str] = {}
    for task_id, text in benchmark_texts(names):
        for g in ngrams(text):
            grams.setdefault(g, task_id)
    return grams


def overlapping(texts: Iterable[str], grams: dict[tuple[str, ...], str]) -> list[tuple[int, str]]:
    """(index, benchmark task_id) for each text sharing a 13-gram with a benchmark."""
    found = []
    for i, text in enumerate(texts):
        hit = next((grams[g] for g in ngrams(text) if g in grams), None)
        if hit is not None:
            found.append((i, hit))
    return found


def overlaps(ds: Dataset, grams: dict[tuple[str, ...], str]) -> list[tuple[int, str]]:
    """(row index, benchmark task_id) for each row (every string in it) sharing a 13-gram with a benchmark."""
    return overlapping((row_text(row) for row in ds), grams)


def drop_overlapping(ds: Dataset, grams: dict[tuple[str, ...], str]) -> tuple[Dataset, list[tuple[int, str]]]:
    """Rendered rows (qlcode.data.pipeline, with their `_text`) without those that overlap a benchmark."""
    bad = overlapping(ds["_text"], grams)
    drop = {i for i, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in drop]), bad
