"""`quant.kernels: auto` takes qlcode's Triton kernels only where they have checked out.

The first time auto would use them on a GPU model with given torch, Triton and bitsandbytes
versions, the Triton dequantization runs on the loaded model's own first 4-bit layer and must
equal bitsandbytes' bit for bit (decoding's few rows go through bitsandbytes' own matmul either
way). A compile error, any other exception or a mismatch means bitsandbytes' kernels, with one
line saying why. The verdict is kept in ~/.cache/qlcode/kernel-checks.json ($XDG_CACHE_HOME
respected), keyed by GPU and versions, so a driver or library upgrade checks again.
`quant.kernels: triton` forces the kernels, unchecked.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from qlcode.progress import console
from qlcode.files import write_text_atomic


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qlcode" / "kernel-checks.json"


def version_key(device: torch.device) -> str:
    """What the verdict depends on: the GPU and the three libraries that compile and check the kernels."""
    import bitsandbytes
    import triton

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{gpu} | torch {torch.__version__} | triton {triton.__version__} | bitsandbytes {bitsandbytes.__version__}"


def first_4bit_layer(model: torch.nn.Module):
    import bitsandbytes as bnb

    return next((m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)), None)


def check_layer(layer) -> str | None:
    """None when the Triton dequantization equals bitsandbytes' on this 4-bit layer, else why not."""
    import bitsandbytes.functional as F

    packed, state = layer.weight.data, layer.weight.quant_state
    try:
        from qlcode.kernels.qlora_linear import TRITON as kernels  # imports Triton: inside, since it can fail too

        want = F.dequantize_4bit(packed, state)
        got = kernels.dequantize(packed, state, want.dtype)
        if not torch.equal(got, want):
            wrong = (got != want).sum().item()
            return f"dequantization differs from bitsandbytes' in {wrong} of {want.numel()} weights"
        return None
    except Exception as e:  # a compile error, a launch failure: any of them rules the kernels out here
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"


def triton_checks_out(model: torch.nn.Module, cache: Path | None = None) -> bool:
    """Whether the Triton kernels agree with bitsandbytes on this model's first 4-bit layer, from
    the cache when this GPU and these versions were checked before; says why when they do not."""
    layer = first_4bit_layer(model)
    if layer is None:
        return False
    cache = cache or cache_path()
    key = version_key(layer.weight.device)
    verdicts = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in verdicts:
        verdicts[key] = {"reason": check_layer(layer), "checked": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text_atomic(cache, json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
        seen = ""
    else:
        seen = f" (checked {verdicts[key]['checked']}; delete {cache} to check again)"
    reason = verdicts[key]["reason"]
    if reason is not None:
        console.print(f"quant.kernels: auto: using bitsandbytes' 4-bit kernels, qlcode's Triton kernels failed "
                      f"their check on {key}: {reason}{seen}", soft_wrap=True)
    return reason is None


def auto_kernels(model: torch.nn.Module, cache: Path | None = None) -> str:
    """What quant.kernels: auto means for this model: "triton" on CUDA where they check out."""
    return "triton" if torch.cuda.is_available() and triton_checks_out(model, cache) else "bitsandbytes"
