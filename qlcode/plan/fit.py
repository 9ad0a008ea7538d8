"""Will a run fit a GPU: GPU sizes by name, the verdict, and the changes that make a run fit,
each checked by planning the changed run again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from qlcode.errors import QlcodeError
from qlcode.plan.memory import GiB, Plan, Settings, plan
from qlcode.plan.shapes import Shapes

# Memory of common GPUs in GiB, as nvidia-smi reports their total (cards are sized in binary units).
GPUS = {
    "T4": 15, "V100": 16, "V100-32GB": 32, "A10": 24, "A10G": 24, "L4": 24, "RTX3090": 24, "RTX4090": 24,
    "RTX5090": 32, "A6000": 48, "L40S": 48, "A100": 40, "A100-40GB": 40, "A100-80GB": 80, "H100": 80,
    "H200": 141, "B200": 180,
}
# The preflight stops a run planned to need more than the GPU by this factor: the plan's
# estimated parts (activations, logits, overhead) can be off, so only clear misfits stop.
CLEAR_MISFIT = 1.10


class PlanError(QlcodeError):
    """A run that cannot fit the GPU it is about to train on."""


def gpu_bytes(spec: str) -> int:
    """'24GB', '80GiB', 'A100-80GB', 'RTX4090', 'h100' -> bytes."""
    key = spec.strip().upper().replace(" ", "")
    if key in GPUS:
        return GPUS[key] * GiB
    match = re.fullmatch(r"(\d+(?:\.\d+)?)GI?B", key)
    if match:
        return int(float(match.group(1)) * GiB)
    raise QlcodeError(f"--gpu {spec!r}: give a size such as 24GB, or one of: {', '.join(GPUS)}")


@dataclass(frozen=True)
class Change:
    """One change to a run: the recipe overrides to write, and the plan of the changed run."""

    overrides: tuple[str, ...]
    plan: Plan

    @property
    def text(self) -> str:
        return " ".join(self.overrides)


def usable(s: Settings, capacity: int) -> int:
    """The GPU memory training may use: all of it, less the share colocated vLLM generation holds
    (train.grpo.vllm_gpu_memory_utilization: vLLM's weights copy and KV cache live there)."""
    return int(capacity * (1 - s.vllm_share))


def fits(p: Plan, capacity: int) -> bool:
    return p.total <= usable(p.settings, capacity)


def _candidates(s: Settings) -> list[tuple[tuple[str, ...], Settings]]:
    """Single changes, cheapest in lost quality or speed first; each lowers memory."""
    out = []
    if not s.checkpointing:
        out.append((("train.gradient_checkpointing=true",), replace(s, checkpointing=True)))
    if s.attention == "eager":
        out.append((("model.attn_implementation=sdpa",), replace(s, attention="sdpa")))
    if s.checkpointing and not s.offload:
        out.append((("train.offload_activations=true",), replace(s, offload=True)))
    if s.optimizer == "adamw_torch":
        out.append((("train.optimizer=paged_adamw_8bit",), replace(s, optimizer="paged_adamw_8bit")))
    batch = s.micro_batch // 2
    while batch >= 1:  # the same tokens per optimizer step through more accumulation
        accumulation = s.accumulation * s.micro_batch // batch
        out.append(((f"train.micro_batch_size={batch}", f"train.gradient_accumulation_steps={accumulation}"),
                    replace(s, micro_batch=batch, accumulation=accumulation)))
        batch //= 2
    if set(s.targets) != {"q_proj", "k_proj", "v_proj", "o_proj"}:
        out.append((("lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",), replace(s, targets=("q_proj", "k_proj", "v_proj", "o_proj"))))
    if s.bits != 4:
        out.append((("quant.bits=4",), replace(s, bits=4)))
    length = s.max_length // 2
    while length >= 256:
        out.append(((f"data.max_length={length}",), replace(s, max_length=length)))
        length //= 2
    return out


def _kind(overrides: tuple[str, ...]) -> str:
    return overrides[0].split("=")[0]


def suggestions(shapes: Shapes, s: Settings, capacity: int) -> list[Change]:
    """Changes after which the plan fits `capacity`: each single change that does (the largest
    micro batch and max_length that fit), and the mildest combination, in the order of
    `_candidates`, that does."""
    found: dict[str, Change] = {}
    for overrides, changed in _candidates(s):
        p = plan(shapes, changed)
        if _kind(overrides) not in found and fits(p, capacity):
            found[_kind(overrides)] = Change(overrides, p)
    combined = _combination(shapes, s, capacity)
    if combined is not None and len(combined.overrides) > 2:
        found["combined"] = combined
    return list(found.values())


def _combination(shapes: Shapes, s: Settings, capacity: int) -> Change | None:
    """Each kind of change in turn, its mildest step that makes the run fit, else its strongest."""
    applied: tuple[str, ...] = ()
    current = s
    for kind in dict.fromkeys(_kind(o) for o, _ in _candidates(s)):
        options = [(o, c) for o, c in _candidates(current) if _kind(o) == kind]
        for overrides, changed in options:  # mildest step first
            p = plan(shapes, changed)
            if fits(p, capacity):
                return Change(applied + overrides, p)
        if options:
            applied, current = applied + options[-1][0], options[-1][1]
    return None


def longest(shapes: Shapes, s: Settings, capacity: int, step: int = 256, limit: int = 1 << 22) -> int:
    """The longest max_length, a multiple of `step` up to `limit`, whose plan fits `capacity`; 0 if none
    does (every part grows with the length, so a bisection finds it)."""
    fits_at = lambda n: fits(plan(shapes, replace(s, max_length=n * step)), capacity)  # noqa: E731
    low, high = 0, limit // step  # fits_at(low) holds (0 tokens) or the answer is 0
    if not fits_at(1):
        return 0
    low = 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits_at(middle) else (low, middle - 1)
    return low * step


def preflight(shapes: Shapes, s: Settings, capacity: int) -> Plan:
    """Stop a run that clearly cannot fit, with the changes that make it fit; else its plan."""
    p = plan(shapes, s)
    if p.total <= usable(s, capacity) * CLEAR_MISFIT:
        return p
    fixes = suggestions(shapes, s, capacity)
    left = f" ({usable(s, capacity) / GiB:.1f} GiB besides vLLM's {s.vllm_share:.0%})" if s.vllm_share else ""
    lines = [f"this run needs about {p.total / GiB:.1f} GiB of GPU memory and the GPU has {capacity / GiB:.1f} GiB{left} "
             f"(qlcode plan shows each part)."]
    if fixes:
        lines.append("changes that make it fit (planned total):")
        lines += [f"  {c.text}   ({c.plan.total / GiB:.1f} GiB)" for c in fixes]
    else:
        lines.append("no change of micro batch, checkpointing, optimizer, LoRA targets or max_length makes it fit: "
                     "use a GPU with more memory")
    lines.append("or skip this check with --no-preflight")
    raise PlanError("\n".join(lines))
