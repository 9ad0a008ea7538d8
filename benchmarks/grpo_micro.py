"""Can the micro model earn reward on builtin:python-basics? pass@1, pass@8 and mixed groups at T=1.0.

    python benchmarks/grpo_micro.py                                   # the base, 8 samples of 16 tokens
    python benchmarks/grpo_micro.py --adapter adapters/quickstart-example --max-new-tokens 64
    python benchmarks/grpo_micro.py --adapter adapters/quickstart-grpo --split test

GRPO learns only from groups whose rewards differ: a problem all of whose samples fail (or all
pass) teaches nothing. For each split and level of the set this prints how many problems, pass@1
and pass@8 (Chen et al. 2021), how many problems were solved at least once in 8 samples, how many
had mixed outcomes (some samples pass, some fail) and how many passed in all 8, sampling as GRPO
does (temperature 1.0, top-p 0.95); then the wall time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qlcode.builtin import DATASETS  # noqa: E402
from qlcode.execution.benchmarks import python_basics  # noqa: E402
from qlcode.execution.evaluate import execute, summarize  # noqa: E402
from qlcode.execution.engines.batched import TransformersEngine  # noqa: E402
from qlcode.execution.generate import in_order, sample  # noqa: E402
from qlcode.inference import load_model  # noqa: E402
from qlcode.models import Quantization  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", help="an adapter run directory (default: the base builtin:micro-codellama)")
    ap.add_argument("--bits", default="none", help="quantization of the base given alone: 4, 8 or none")
    ap.add_argument("--split", choices=["train", "test", "all"], default="all")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()

    with gzip.open(DATASETS["python-basics"], "rt") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    start = time.time()
    bits = None if args.bits == "none" else int(args.bits)
    loaded = load_model(None if args.adapter else "builtin:micro-codellama", args.adapter, Quantization(bits=bits))
    problems = python_basics(None if args.split == "all" else args.split)
    engine = TransformersEngine(loaded.model, loaded.tokenizer)
    results = execute(problems, in_order(sample(engine, problems, loaded.instruct, args.n, args.temperature, args.max_new_tokens)),
                      workers=2)
    seconds = time.time() - start

    groups = defaultdict(list)
    for r in results:
        row = rows[r.task_id]
        for key in (row["split"], f"{row['split']} / {row['level']}"):
            groups[key].append(r)
    ks = [k for k in (1, args.n) if k <= args.n]
    print(f"\n{args.adapter or 'builtin:micro-codellama'} ({'Instruct prompt' if loaded.instruct else 'code prompt'}), "
          f"n={args.n}, T={args.temperature}, {args.max_new_tokens} new tokens, {seconds:.0f} s\n")
    print("| split / level | problems | " + " | ".join(f"pass@{k}" for k in ks) + " | solved at least once | mixed | all pass |")
    print("| --- " * (5 + len(ks)) + "|")
    for key, rs in sorted(groups.items()):
        s = summarize(rs, ks)
        print(f"| {key} | {len(rs)} | " + " | ".join(f"{100 * s[f'pass@{k}']:.1f}%" for k in ks)
              + f" | {sum(r.passed > 0 for r in rs)} | {sum(0 < r.passed < args.n for r in rs)} | {sum(r.passed == args.n for r in rs)} |")


if __name__ == "__main__":
    main()
