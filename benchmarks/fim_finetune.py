"""Does infilling-aware fine-tuning keep a model's ability to infill?

    python benchmarks/fim_finetune.py        # about 6 minutes on 2 CPU cores

Trains recipes/quickstart.yaml twice on the pretrained micro model, without and with
`data.fim` (rate 0.5, line-level split points), then measures exact match of infilled held-out
lines (the same 200 cases from standard-library modules no training data comes from) for the
base and both adapters, the loss of the true line after the infilling prompt, and the
instruction eval loss of each adapter. Prints a Markdown table.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qlcode.builtin.build.evaluate import held_out_infill_cases  # noqa: E402
from qlcode.infill import exact_match, middle_nll  # noqa: E402
from qlcode.inference import load_model  # noqa: E402
from qlcode.models import Quantization  # noqa: E402
from qlcode.recipe import load_recipe  # noqa: E402
from qlcode.train import train  # noqa: E402

OUT = REPO / "build" / "fim-benchmark"
CASES = 200


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    cases = held_out_infill_cases(CASES)
    rows = []
    loaded = load_model("builtin:micro-codellama", quant=Quantization(bits=None))
    base, tok = loaded.model, loaded.tokenizer
    rows.append(("base (pretrained micro-codellama)", None, exact_match(base, tok, cases), middle_nll(base, tok, cases)))
    for name, overrides in [("adapter, no data.fim", []), ("adapter, data.fim rate 0.5", ["data.fim={rate: 0.5, unit: line}"])]:
        run = OUT / name.split(",")[1].strip().replace(" ", "-").replace(".", "")
        recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [f"output.dir={run}", *overrides])
        result = train(recipe)
        loaded = load_model(adapter=run)
        model, tok = loaded.model, loaded.tokenizer
        rows.append((name, result.eval_loss_after, exact_match(model, tok, cases), middle_nll(model, tok, cases)))
    print(f"micro-codellama, recipes/quickstart.yaml, {CASES} held-out lines, {time.strftime('%Y-%m-%d')}, "
          f"torch {torch.__version__}, {'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")
    print("| model | instruction eval loss | infilled lines, exact match | loss of the true line (nats/token) |\n"
          "| --- | --- | --- | --- |")
    for name, loss, em, nll in rows:
        print(f"| {name} | {'-' if loss is None else f'{loss:.4f}'} | {100 * em:.1f}% | {nll:.3f} |")


if __name__ == "__main__":
    main()
