"""Offloaded activations (train.offload_activations): the tensors autograd saves in forward go to
pinned CPU memory and come back for backward.

With gradient checkpointing those are each decoder layer's input (torch's non-reentrant
checkpoint saves its inputs through save_for_backward, outside its own hooks), the tensors that
`qlcode plan` counts as "activations": on the GPU only the layer being recomputed remains.
torchtune's OffloadActivations and unsloth's offloaded checkpointing are the anchors; this is
the plain form of theirs: the copy out runs on a side stream (the next layer computes meanwhile),
the copy back waits for it in backward (no prefetch). Parameters and tensors under MIN_BYTES
stay where they are. On a CPU the "offload" is a plain copy, which keeps the same code path
under test (tests/test_train_speed.py: losses and gradients equal the path without it).
"""

from __future__ import annotations

import types

import torch

MIN_BYTES = 1 << 20  # smaller tensors (RoPE tables, scalars) cost more to move than they free


class OffloadedActivations(torch.autograd.graph.saved_tensors_hooks):
    """Inside: saved tensors of at least `min_bytes` leave the GPU until backward needs them."""

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.stream = None
        self.moved: list[torch.Size] = []  # shapes of the tensors moved out, for tests
        super().__init__(self.pack, self.unpack)

    def pack(self, t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter) or t.nbytes < self.min_bytes:
            return t
        self.moved.append(t.shape)
        if t.device.type != "cuda":
            return t.clone()  # CPU: nothing to free, the same path
        if self.stream is None:
            self.stream = torch.cuda.Stream(t.device)
        self.stream.wait_stream(torch.cuda.current_stream(t.device))  # t is written by then
        with torch.cuda.stream(self.stream):
            host = torch.empty(t.shape, dtype=t.dtype, layout=t.layout, pin_memory=True)
            host.copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        t.record_stream(self.stream)  # the allocator reuses t's memory only after the copy
        return host, t.device, done

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        host, device, done = packed
        torch.cuda.current_stream(device).wait_event(done)
        return host.to(device, non_blocking=True)


def offload_activations(model: torch.nn.Module, min_bytes: int | None = None) -> OffloadedActivations:
    """Run every forward of `model` with its saved tensors offloaded; the hooks are `model.offloaded`."""
    hooks = model.offloaded = OffloadedActivations(MIN_BYTES if min_bytes is None else min_bytes)
    forward = model.forward

    def offloaded(self, *args, **kwargs):
        with hooks:
            return forward(*args, **kwargs)

    model.forward = types.MethodType(offloaded, model)
    return hooks
