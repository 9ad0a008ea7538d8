"""FSDP2 + QLoRA the way PEFT's and Answer.AI's recipes run it, as the Trainer's fsdp_config.

accelerate shards each decoder layer (and, for a PEFT model, each LoRA layer) with torch's
`fully_shard`; the 4-bit weights shard only when their storage dtype is the model's float dtype
(the recipe checks ask for it). Checkpoints hold the adapter only, sharded; the final adapter is
gathered to rank 0 (qlcode.distributed.adapter).
"""

from __future__ import annotations

import torch

from qlcode.errors import QlcodeError


def fsdp_config() -> dict:
    """TrainingArguments.fsdp_config (transformers turns it into accelerate's FSDP plugin)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's decoder layers (its _no_split_modules)
        "reshard_after_forward": True,  # free each layer's gathered weights after its forward
        "cpu_ram_efficient_loading": True,  # PEFT's FSDP-QLoRA setting
        "state_dict_type": "SHARDED_STATE_DICT",  # checkpoints: each rank writes its shard (adapter only)
    }


def fsdp_args(recipe) -> dict:
    if not torch.cuda.is_available():
        raise QlcodeError("distributed.strategy: fsdp runs on GPUs (accelerate enables FSDP for CUDA devices only; "
                          "on CPU it would silently train as DDP): use distributed.strategy: ddp here")
    return {"fsdp": True, "fsdp_config": fsdp_config()}
