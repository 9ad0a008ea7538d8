"""`qlcode train` itself on recipes/python-sft.yaml's shapes, random weights, under a GPU memory cap.

    python benchmarks/train_capped.py --memory-cap 24          # a 24 GB card emulated on a larger GPU
    python benchmarks/train_capped.py --scale 32 --layers 2    # without a GPU: a run of the script

python-sft.yaml as it is (micro batch 4 x 2048, packing, r16 all-linear, dropout 0.05, 8-bit
paged AdamW, checkpointing, quant.kernels auto: the kernel self-check, the fused blocks), with
three changes so that it runs offline and briefly: the base is the random-weight CodeLlama-7B
architecture (harness.random_codellama, the micro model's tokenizer beside it), the data the
built-in stdlib-python-instruct rows, and 4 steps with a checkpoint at step 2 and the final save.
The cap is qlcode train's own --memory-cap: the preflight plans against the capped size, and the
process is capped there (torch.cuda.set_per_process_memory_fraction) before anything is loaded.
Prints the run's summary.json and the files it wrote.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import harness
import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-cap", type=float, default=24, metavar="GIB", help="GPU memory cap (GPU only)")
    ap.add_argument("--scale", type=int, default=1, help="divide the model's widths (CPU runs)")
    ap.add_argument("--layers", type=int, default=None, help="default: the architecture's 32")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from qlcode.builtin import MODELS
    from qlcode.cli import app

    model_dir = harness.random_codellama("7B", args.scale, args.layers)
    if not (model_dir / "tokenizer.json").is_file():
        AutoTokenizer.from_pretrained(MODELS["micro-codellama"]).save_pretrained(model_dir)
    recipe = yaml.safe_load((harness.REPO / "recipes" / "python-sft.yaml").read_text())
    recipe["model"]["base"] = str(model_dir)
    recipe["data"].update(datasets=[{"source": "builtin:stdlib-python-instruct", "format": "alpaca"}], validation=0)
    if not harness.GPU:  # a short run of the script: the shapes are /scale already, the sequences too
        recipe["data"]["max_length"] = 256
        recipe["train"]["micro_batch_size"] = 2
    recipe["train"].update(max_steps=args.steps, save_steps=2, eval_steps=None)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        recipe["output"] = {"name": "python-sft-capped", "dir": str(run)}
        path = Path(tmp) / "python-sft-capped.yaml"
        path.write_text(yaml.safe_dump(recipe))
        cap = f"GPU memory capped at {args.memory_cap:g} GiB" if harness.GPU else "no cap"
        print(harness.header(f"qlcode train: python-sft.yaml's shapes, random weights, {args.steps} steps, {cap}"))
        try:
            app(["train", str(path), *(["--memory-cap", f"{args.memory_cap:g}GiB"] if harness.GPU else [])], standalone_mode=False)
        finally:
            summary = run / "summary.json"
            print(json.dumps(json.loads(summary.read_text()), indent=1) if summary.is_file() else "no summary.json: the run did not finish")
            print("files:", sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "checkpoint" not in p.parent.name)[:20])
            print("checkpoints:", sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) if (run / "checkpoints").is_dir() else [])
            if harness.GPU:
                print(f"torch peak allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
