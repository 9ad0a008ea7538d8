"""`qlcode plan`: the GPU memory a recipe's run needs, part by part, and whether it fits a GPU.

    shapes.py  the base model's shapes (its config; shipped configs for Code Llama's Hub ids)
    memory.py  the bytes of each part of a run, from shapes and plain settings
    fit.py     GPU sizes, the verdict, the changes that make a run fit, the preflight
    startup.py lora.init's start-up transient (PiSSA, OLoRA, LoftQ), a line of its own beside the total
    report.py  the table `qlcode plan` prints
"""

from __future__ import annotations

from qlcode.plan.fit import GPUS, Change, PlanError, fits, gpu_bytes, longest, suggestions
from qlcode.plan.memory import GiB, Plan, Settings, plan, settings
from qlcode.plan.shapes import Shapes, load_shapes

__all__ = ["GPUS", "Change", "GiB", "Plan", "PlanError", "Settings", "Shapes", "fits", "gpu_bytes", "load_shapes",
           "longest", "plan", "plan_recipe", "preflight", "settings", "suggestions"]


def plan_recipe(recipe, device: str = "cuda") -> Plan:
    """The plan of a recipe's run on a CUDA GPU (or, for tests, on the CPU)."""
    return plan(load_shapes(recipe.model.base, recipe.model.revision), settings(recipe, device))


def preflight(recipe, capacity: int | None = None, skip: bool = False) -> Plan | None:
    """Before `qlcode train` loads anything: stop (PlanError) a run that clearly cannot fit the
    GPU, with changes that make it fit. capacity None = this machine's CUDA GPU; no GPU, no check."""
    from qlcode.plan import fit

    if skip:
        return None
    if capacity is None:
        import torch

        if not torch.cuda.is_available():
            return None
        capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return fit.preflight(load_shapes(recipe.model.base, recipe.model.revision), settings(recipe, "cuda"), capacity)
