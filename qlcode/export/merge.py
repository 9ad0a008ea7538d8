"""Merge a LoRA adapter into its base in full precision, shard by shard, and prove the merge.

Merging into a 4-bit base re-quantizes the weights and degrades the model (the most reported
pitfall of QLoRA exports), so the base is read in full precision from its safetensors shards.
Each shard is read, merged (W + scale * B @ A, computed in fp32) and written before the next one is
read: peak memory is one shard plus the adapter, never two copies of the model. The result is
checked against the adapter applied to the same base in the same dtype, on a probe batch, one
model in memory at a time; a merge beyond the tolerance is deleted and reported.

A LoftQ adapter (lora.init: loftq) is the exception: it was fitted to the 4-bit base's quantization error
(B A ~ W - deq(W)), so adding it to W would count that error twice. It is merged into the 4-bit base it
was trained on, dequantized (every 4-bit layer, so the merge is that model), and checked against that
4-bit base + adapter; the 4-bit base (about a quarter of the bf16 model) stays in memory meanwhile.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import bitsandbytes as bnb
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qlcode.errors import QlcodeError
from qlcode.export import writing_into
from qlcode.files import read_json, write_text_atomic
from qlcode.loftq import dequantized
from qlcode.model_card import license_of, tags_of
from qlcode.models import Quantization, base_path, load_base, load_tokenizer
from qlcode.placement import DTYPES
from qlcode.recipe import HUB_ID
from qlcode.runs import RunDir

# max |logit difference| allowed between the merged model and base + adapter, per dtype
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2.5e-1}
PROBES = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\n\nfor root, dirs, files in os.walk('.'):\n",
    "<s>[INST] Write a function that reverses a string. [/INST]",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]
COPIED = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "tokenizer.model")


@dataclass
class MergeReport:
    out: str
    dtype: str
    max_logit_diff: float
    top1_agreement: float
    tolerance: float
    shards: int
    quantized: str | None = None
    quantized_logit_diff: float | None = None  # the re-quantized model against the full-precision merge
    quantized_top1_agreement: float | None = None
    into_4bit: bool = False  # LoftQ: merged into the dequantized 4-bit base


def local_base(spec: str, revision: str | None) -> Path:
    """The base's files on disk: a local directory, or the Hub snapshot (safetensors, configs)."""
    path = Path(base_path(spec))
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        raise QlcodeError(f"the adapter's base {spec!r} is no longer a model directory; put the base model back there, or "
                          "set model.base in the run's recipe.yaml to where it is now")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, revision=revision, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as e:  # network, auth, not found: huggingface_hub raises many types
        raise QlcodeError(f"cannot fetch base {spec!r} from the Hub: {e}") from None


def safetensors_shards(base: Path) -> list[str]:
    index = base / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (base / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise QlcodeError(f"{base}: no model.safetensors or model.safetensors.index.json; merging needs safetensors weights")


def lora_deltas(adapter: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor], float]:
    """(base key -> (A, B), base key -> replaced tensor for modules_to_save, scale)."""
    cfg = read_json(adapter / "adapter_config.json", "it is written by qlcode train; re-run the training or copy the run again")
    if cfg.get("use_dora"):
        raise QlcodeError("merging DoRA adapters is not supported yet: its magnitude vector needs the whole weight")
    scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    replaced = {}
    weights = RunDir(adapter).weights
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise QlcodeError(f"{weights}: not a readable safetensors file ({e}); the adapter is damaged: re-run its "
                          "training or copy it again") from None
    for key, t in tensors.items():
        name = key.removeprefix("base_model.model.")
        if ".lora_A." in name or ".lora_B." in name:
            module, part = (name.split(".lora_A.")[0], "A") if ".lora_A." in name else (name.split(".lora_B.")[0], "B")
            pairs.setdefault(f"{module}.weight", {})[part] = t
        else:
            replaced[name] = t
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}, replaced, scale


def merge_shard(tensors: dict[str, torch.Tensor], deltas, replaced, scale: float, dtype: torch.dtype,
                device: torch.device, four_bit: dict[str, torch.nn.Parameter] | None = None
                ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """`four_bit` (LoftQ): key -> the 4-bit weight the adapter was fitted to, which replaces the file's weight."""
    out, used = {}, set()
    for key, w in tensors.items():
        if four_bit and key in four_bit:
            w = dequantized(four_bit[key])
        if key in deltas:
            a, b = deltas[key]
            w = w.to(device, torch.float32) + scale * (b.to(device, torch.float32) @ a.to(device, torch.float32))
            used.add(key)
        elif key in replaced:
            w = replaced[key]
            used.add(key)
        out[key] = w.to(dtype).contiguous().cpu()
    return out, used


def release_memory() -> None:
    """Hand freed shard memory back to the OS; glibc keeps it otherwise, and RSS grows shard after shard."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc
            pass


@torch.no_grad()
def _probe_logits(model, tokenizer, device: torch.device) -> torch.Tensor:
    batch = tokenizer(PROBES, return_tensors="pt", padding=True).to(device)
    return model(**batch).logits.float().cpu() * batch["attention_mask"].cpu()[..., None]


def _gap(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max |logit difference|, top-1 agreement over the real, unpadded positions)."""
    mask = want.abs().sum(-1) > 0
    return (got - want).abs().max().item(), (got.argmax(-1)[mask] == want.argmax(-1)[mask]).float().mean().item()


def _check(adapter: Path, base: Path | torch.nn.Module, merged: Path, tok, dtype: torch.dtype, device: torch.device):
    """(max |logit difference|, top-1 agreement, the merged model's probe logits); `base` is a directory,
    or (LoftQ) the loaded 4-bit base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(base, Path):
        base = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    reference = PeftModel.from_pretrained(base, str(adapter))
    want = _probe_logits(reference.to(device).eval(), tok, device)
    del reference
    got = _probe_logits(AutoModelForCausalLM.from_pretrained(merged, dtype=dtype).to(device).eval(), tok, device)
    return (*_gap(got, want), got)


def _requantize(merged: Path, dest: Path, tok, full_logits: torch.Tensor, dtype: str) -> tuple[float, float]:
    """Save the merge re-quantized to bitsandbytes NF4 (double quant) on this process's device, through
    qlcode's own loader; returns its logit gap to the full-precision merge."""
    quantized = load_base(str(merged), Quantization(bits=4, compute_dtype=dtype), dtype=dtype)
    got = _probe_logits(quantized.eval(), tok, quantized.device)
    quantized.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (merged / name).is_file():
            shutil.copy(merged / name, dest / name)
    return _gap(got, full_logits)


def merge(adapter_dir: str | Path, out: str | Path, dtype: str = "bf16", device: str = "cpu",
          tolerance: float | None = None, quantize: str | None = None) -> MergeReport:
    """Write base + adapter merged to `out`; nothing is left at `out` unless the check passes."""
    adapter, out = Path(adapter_dir), Path(out)
    run = RunDir(adapter)
    run.require_adapter("merge")
    if out.exists():
        raise QlcodeError(f"{out} already exists; choose another --out or delete it")
    if quantize not in (None, "nf4"):
        raise QlcodeError(f"--quantize: only nf4 is supported, not {quantize!r}")
    recipe = run.recipe()
    base = local_base(recipe.model.base, recipe.model.revision)
    torch_dtype, dev = DTYPES[dtype], torch.device(device)
    four_bit_base = _loftq_base(base, recipe, dtype) if recipe.lora.init == "loftq" else None
    four_bit = None if four_bit_base is None else {
        f"{name}.weight": m.weight for name, m in four_bit_base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    deltas, replaced, scale = lora_deltas(adapter)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing_into(out.parent):
        tmp.mkdir(parents=True)
    try:
        used: set[str] = set()
        weight_map, total = {}, 0
        shards = safetensors_shards(base)
        for shard in shards:
            merged, hit = merge_shard(load_file(base / shard), deltas, replaced, scale, torch_dtype, dev, four_bit)
            used |= hit
            save_file(merged, tmp / shard, metadata={"format": "pt"})
            weight_map.update({k: shard for k in merged})
            total += sum(t.numel() * t.element_size() for t in merged.values())
            del merged
            release_memory()
        missing = (set(deltas) | set(replaced)) - used
        if missing:
            raise QlcodeError(f"the adapter touches weights the base does not have: {sorted(missing)[:3]} (is it the right base?)")
        if len(shards) > 1:
            write_text_atomic(tmp / "model.safetensors.index.json",
                              json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        for name in COPIED:
            if (base / name).is_file():
                shutil.copy(base / name, tmp / name)
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
        write_text_atomic(tmp / "config.json", json.dumps(config, indent=2))
        for name in TOKENIZER_FILES:
            if (adapter / name).is_file():
                shutil.copy(adapter / name, tmp / name)
        tok = load_tokenizer(str(tmp))  # the project's pad policy for the padded probe batch
        diff, top1, merged_logits = _check(adapter, base if four_bit_base is None else four_bit_base, tmp, tok,
                                           torch_dtype, dev)
        del four_bit_base, four_bit
        limit = TOLERANCE[dtype] if tolerance is None else tolerance
        if not diff <= limit:
            raise QlcodeError(f"merge check failed: max |logit difference| {diff:.3g} > tolerance {limit:g} ({dtype}); "
                              f"nothing was written to {out}")
        report = MergeReport(str(out), dtype, diff, top1, limit, len(shards), into_4bit=recipe.lora.init == "loftq")
        final = tmp
        if quantize == "nf4":
            final = tmp.with_name(f"{tmp.name}-nf4")
            shutil.rmtree(final, ignore_errors=True)
            report.quantized = "nf4"
            report.quantized_logit_diff, report.quantized_top1_agreement = _requantize(
                tmp, final, tok, merged_logits, dtype)
        write_text_atomic(final / "README.md", _card(recipe, adapter, report))
        final.rename(out)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(f"{tmp.name}-nf4"), ignore_errors=True)


def _loftq_base(base: Path, recipe, dtype: str) -> torch.nn.Module:
    """The 4-bit base a LoftQ adapter was fitted to, loaded as training loads it (quantized from the weights in
    `dtype`: the run's own codes when that is the dtype it trained in), computing in `dtype` for the check."""
    quant = Quantization(**{**recipe.quant.model_dump(), "compute_dtype": dtype})
    return load_base(str(base), quant, dtype=dtype)


def _card(recipe, adapter: Path, r: MergeReport) -> str:
    return f"""---
base_model: {recipe.model.base}
library_name: transformers
license: {license_of(recipe.model.base)}
tags: [{', '.join(['qlcode', *tags_of(recipe.model.base), 'merged-lora'])}]
pipeline_tag: text-generation
---

# {recipe.output.name} (merged)

`{recipe.model.base}` with the LoRA adapter `{adapter.name}` merged in, saved in {r.dtype}.
{"A LoftQ adapter, fitted to the 4-bit base's quantization error: merged into that 4-bit base, dequantized, shard by shard "
 "(into the full-precision base it would count the error twice)." if r.into_4bit else
 "Merged in full precision (never into a 4-bit base), shard by shard."}

Check against base + adapter in {r.dtype} on a probe batch: max |logit difference| {r.max_logit_diff:.3g}
(tolerance {r.tolerance:g}), top-1 agreement {100 * r.top1_agreement:.1f}%.
""" + ("" if r.quantized is None else f"""
These weights are that merge re-quantized to bitsandbytes {r.quantized} (double quantization): against the
full-precision merge, max |logit difference| {r.quantized_logit_diff:.3g}, top-1 agreement
{100 * r.quantized_top1_agreement:.1f}%. Use the full-precision merge where that gap matters.
""")
