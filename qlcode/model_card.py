"""The README.md model card written beside every adapter, in the Hugging Face card format."""

from __future__ import annotations

import yaml

from qlcode import __version__
from qlcode.recipe import Recipe


def adapter_card(recipe: Recipe, results: dict[str, float | int | str | None]) -> str:
    hub_datasets = [d.source for d in recipe.data.datasets if not d.source.startswith("builtin:") and "/" in d.source and not d.source.endswith((".jsonl", ".json", ".parquet", ".csv"))]
    meta = {
        "base_model": recipe.model.base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["qlcode", "code-llama", "lora", recipe.train.method] + (["qlora"] if recipe.quant.bits == 4 else []),
    }
    if hub_datasets:
        meta["datasets"] = hub_datasets
    quant = f"{recipe.quant.bits}-bit {recipe.quant.type if recipe.quant.bits == 4 else 'int8'}" if recipe.quant.bits else "none (full-precision base)"
    rows = [
        ("method", recipe.train.method.upper()),
        ("base quantization", quant),
        ("LoRA", f"r={recipe.lora.r}, alpha={recipe.lora.alpha}, dropout={recipe.lora.dropout}, targets={recipe.lora.target_modules}"
         + (", rslora" if recipe.lora.rslora else "") + (", dora" if recipe.lora.dora else "")),
        ("template", recipe.data.template),
        ("max length", recipe.data.max_length),
        ("packing", recipe.data.packing),
        ("loss on completions only", recipe.data.train_on_completions_only),
        ("learning rate", f"{recipe.train.learning_rate} ({recipe.train.lr_scheduler}, warmup {recipe.train.warmup})"),
        ("batch", f"{recipe.train.micro_batch_size} x {recipe.train.gradient_accumulation_steps} accumulation"),
        ("optimizer", recipe.train.optimizer),
    ]
    if recipe.train.method == "dpo":
        rows.append(("DPO", f"beta={recipe.train.dpo_beta}, loss={recipe.train.dpo_loss}"))
    data = "\n".join(f"- `{d.source}` ({d.format}, split {d.split}" + (f", {d.max_rows} rows max" if d.max_rows else "") + ")"
                     for d in recipe.data.datasets)
    hyper = "\n".join(f"| {k} | {v} |" for k, v in rows)
    res = "\n".join(f"| {k} | {v} |" for k, v in results.items() if v is not None)
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {recipe.output.name}

A LoRA adapter for `{recipe.model.base}` trained with qlcode {__version__}. The full recipe is in
`recipe.yaml` beside this card; `qlcode train recipe.yaml` reproduces the run.

## Data
{data}

## Training
| setting | value |
| --- | --- |
{hyper}

## Results
| metric | value |
| --- | --- |
{res}

## Use
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{recipe.model.base}")
model = PeftModel.from_pretrained(base, "PATH_OR_REPO_OF_THIS_ADAPTER")
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_OF_THIS_ADAPTER")
```
"""
