"""The TrainingArguments of the recipe's distributed section."""

from __future__ import annotations

from qlcode.ranks import world_size


def trainer_args(recipe) -> dict:
    """A finite collective timeout always; the engine's arguments when several processes train."""
    d = recipe.distributed
    args: dict = {"ddp_timeout": d.timeout_minutes * 60}
    if world_size() > 1 and d.strategy == "ddp":
        args["ddp_find_unused_parameters"] = False  # LoRA uses every trainable weight in each forward
    elif world_size() > 1 and d.strategy == "fsdp":
        from qlcode.distributed.fsdp import fsdp_args

        args |= fsdp_args(recipe)
    elif world_size() > 1 and d.strategy == "deepspeed":
        from qlcode.distributed.deepspeed_config import deepspeed_args

        args |= deepspeed_args(recipe)
    return args
