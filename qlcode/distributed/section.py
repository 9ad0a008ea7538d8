"""The recipe's `distributed:` section: which engine shares the work between processes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from qlcode.schema import Section


class DistributedSection(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="With several processes: ddp (each GPU holds the whole 4-bit model), fsdp (FSDP2 shards "
        "the base and the adapter across GPUs; needs quant.storage_dtype = model.dtype), or deepspeed (ZeRO; "
        "pip install 'qlcode[deepspeed]'). One process trains alone whatever this says.",
    )
    zero_stage: Literal[2, 3] | None = Field(
        None, description="DeepSpeed ZeRO stage: 2 shards optimizer state and gradients, 3 also the weights "
        "(default 2 with strategy deepspeed)."
    )
    deepspeed_config: str | None = Field(
        None, description="Your own DeepSpeed JSON config file instead of the one qlcode generates."
    )
    timeout_minutes: int = Field(
        30, gt=0, description="A process waiting this long for the others in a collective fails the run (never a hang)."
    )

    @model_validator(mode="after")
    def _deepspeed_keys(self) -> DistributedSection:
        """DeepSpeed's keys are a mistake under another strategy; a config file and a stage contradict."""
        if self.strategy != "deepspeed":
            for key in ("zero_stage", "deepspeed_config"):
                if getattr(self, key) is not None:
                    raise ValueError(f"distributed.{key} is a DeepSpeed setting, but distributed.strategy is "
                                     f"{self.strategy}: remove it or set distributed.strategy: deepspeed")
        elif self.deepspeed_config is not None and self.zero_stage is not None:
            raise ValueError("distributed.zero_stage and distributed.deepspeed_config both set: the stage is your "
                             "config file's zero_optimization.stage; remove distributed.zero_stage")
        elif self.deepspeed_config is None and self.zero_stage is None:
            self.zero_stage = 2
        return self


def distributed_problems(recipe) -> list[tuple[tuple, str]]:
    """Combinations the engines reject or that waste the GPUs, as (recipe key, message naming the fix);
    checked with the recipe, before any model loads."""
    d, quant, problems = recipe.distributed, recipe.quant, []
    shards_weights = d.strategy == "fsdp" or (d.strategy == "deepspeed" and d.zero_stage == 3)
    engine = "FSDP" if d.strategy == "fsdp" else "DeepSpeed ZeRO-3"
    if shards_weights and quant.bits == 8:
        problems.append((("quant", "bits"), f"{engine} cannot shard 8-bit bitsandbytes weights: use quant.bits: 4 "
                                            "(with quant.storage_dtype: bf16) or distributed.strategy: ddp"))
    if shards_weights and quant.bits == 4:
        if quant.storage_dtype == "uint8":
            problems.append((("quant", "storage_dtype"),
                             f"{engine} shards 4-bit weights only in a float container (uint8 ones stay whole on every "
                             "GPU): set quant.storage_dtype: bf16 and model.dtype: bf16"))
        elif recipe.model.dtype != quant.storage_dtype:
            problems.append((("model", "dtype"),
                             f"{engine} with 4-bit weights needs model.dtype equal to quant.storage_dtype "
                             f"({quant.storage_dtype}), so that every shard holds one dtype: set model.dtype: {quant.storage_dtype}"))
    if d.strategy == "fsdp" and recipe.train.optimizer == "paged_adamw_8bit":
        problems.append((("train", "optimizer"), "paged_adamw_8bit fails when FSDP saves a checkpoint of a 4-bit model: "
                                                 "set train.optimizer: adamw_torch (or adamw_8bit)"))
    if d.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            problems.append((("distributed", "strategy"), "DeepSpeed is not installed: pip install 'qlcode[deepspeed]', "
                                                          "or set distributed.strategy: ddp or fsdp"))
        if d.deepspeed_config is not None and not Path(d.deepspeed_config).expanduser().is_file():
            problems.append((("distributed", "deepspeed_config"), f"no such file {d.deepspeed_config!r}: name a DeepSpeed "
                                                                  "JSON config, or remove the key to use qlcode's"))
    return problems
