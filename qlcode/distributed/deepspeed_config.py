"""DeepSpeed ZeRO-2/3 through the Trainer's integration: TrainingArguments.deepspeed = a config dict.

The config is generated from the recipe: the values the Trainer already knows from the recipe
(batch sizes, accumulation, clipping, precision) are "auto", which transformers fills in from the
same TrainingArguments, so the two can never disagree. A user's own file replaces it whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qlcode.errors import QlcodeError


def generated_config(stage: int) -> dict:
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,  # checkpoints hold whole adapter weights
        }
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def deepspeed_config(recipe) -> dict:
    """The recipe's DeepSpeed config: the user's file (distributed.deepspeed_config) or the generated one."""
    d = recipe.distributed
    if d.deepspeed_config is None:
        return generated_config(d.zero_stage)
    path = Path(d.deepspeed_config).expanduser()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QlcodeError(f"distributed.deepspeed_config: cannot read {path} as JSON ({e})") from None
    if not isinstance(config, dict):
        raise QlcodeError(f"distributed.deepspeed_config: {path} holds no JSON object")
    return config


def deepspeed_args(recipe) -> dict:
    if not torch.cuda.is_available():
        raise QlcodeError("distributed.strategy: deepspeed runs on GPUs (accelerate does not start DeepSpeed for CPU "
                          "training): use distributed.strategy: ddp here")
    return {"deepspeed": deepspeed_config(recipe)}
