"""The final adapter's weights on rank 0 when an engine shards them (FSDP2, DeepSpeed ZeRO-3)."""

from __future__ import annotations

import torch


def gathered_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The trainable (adapter) weights, whole, by name; None when every rank already holds them whole
    (one process, DDP, ZeRO-2). Every rank must call this: gathering a shard is a collective."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if any(hasattr(p, "ds_id") for p in params.values()):  # DeepSpeed ZeRO-3 partitions
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().cpu().clone() for n, p in params.items()}
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params.values()):  # FSDP2 shards
        return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu() for n, p in params.items()}
    return None
