"""The README.md model card written beside every adapter, in the Hugging Face card format."""

from __future__ import annotations

import yaml

from qlcode import __version__
from qlcode.families import FAMILIES, Family, detect, model_type_of
from qlcode.methods import METHODS
from qlcode.recipe import Recipe


def family_of_base(base: str) -> Family | None:
    """The family listing the base among its Hub ids (Code Llama-Python 7B/13B have none of the
    infilling tokens), else the base's family from its tokenizer and config; None for any other base."""
    from transformers import AutoTokenizer

    from qlcode.models import base_path

    listed = next((f for f in FAMILIES.values() if base.lower() in f.shipped), None)
    if listed is not None:
        return listed
    path = base_path(base)
    try:
        return detect(AutoTokenizer.from_pretrained(path), model_type_of(path))
    except (OSError, ValueError):
        return None


def license_of(base: str) -> str:
    """The licence the weights inherit: ours for the builtin model, else the base family's, else unknown."""
    if base.startswith("builtin:"):
        return "apache-2.0"
    family = family_of_base(base)
    return family.licence if family else "other"


def tags_of(base: str) -> list[str]:
    """The base family's model card tags (none for a base of no known family)."""
    family = family_of_base(base)
    return list(family.tags) if family else []


def adapter_card(recipe: Recipe, summary: dict) -> str:
    """The adapter's README.md; `summary` is the run's summary.json (steps, eval losses, ...)."""
    hub_datasets = [d.source for d in recipe.data.datasets if not d.source.startswith("builtin:") and "/" in d.source and not d.source.endswith((".jsonl", ".json", ".parquet", ".csv"))]
    meta = {
        "base_model": recipe.model.base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["qlcode", *tags_of(recipe.model.base), "lora", recipe.train.method] + (["qlora"] if recipe.quant.bits == 4 else []),
    }
    if hub_datasets:
        meta["datasets"] = hub_datasets
    meta["license"] = license_of(recipe.model.base)
    if summary.get("eval_loss_after") is not None:
        validation = recipe.data.validation
        meta["model-index"] = [{"name": recipe.output.name, "results": [{
            "task": {"type": "text-generation"},
            "dataset": {"name": ", ".join(d.source for d in recipe.data.datasets), "type": "code",
                        "split": validation if isinstance(validation, str) else f"{validation:g} held out"},
            "metrics": [{"type": "loss", "name": "eval loss", "value": round(summary["eval_loss_after"], 4)}],
        }]}]
    results = {
        "steps": summary.get("steps"),
        "eval loss before": _fmt(summary.get("eval_loss_before")),
        "eval loss after": _fmt(summary.get("eval_loss_after")),
        "final train loss": _fmt(summary.get("train_loss")),
    }
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
    rows += METHODS[recipe.train.method].card_lines(recipe)
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


def _fmt(x: float | None) -> str | None:
    return None if x is None else f"{x:.4f}"
