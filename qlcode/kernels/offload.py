"""Offloaded activations (train.offload_activations): the tensors autograd saves in forward go to
pinned CPU memory and come back for backward.

With gradient checkpointing those are each decoder layer's input (torch's non-reentrant
checkpoint saves its inputs through save_for_backward, outside its own hooks), the tensors that
`qlcode plan` counts as "activations": on the GPU only the layer being recomputed remains.
torchtune's OffloadActivations and unsloth's offloaded checkpointing are the anchors; this is
the plain form of theirs: the copy out runs on a side stream (the next layer computes meanwhile),
and when backward takes a tensor back it starts the copy back of the one saved before it on the
side stream (prefetch: backward takes them in the reverse order of forward), so that the previous
layer's input arrives while this layer's backward computes. At most two moved tensors are then on
the GPU at once, the one in use and the one arriving (qlcode plan counts two layers' inputs).
Parameters and tensors under MIN_BYTES stay where they are. On a CPU the "offload" is a plain
copy, which keeps the same code path under test (tests/test_train_speed.py: losses and gradients
equal the path without it).
"""

from __future__ import annotations

import types

import torch

MIN_BYTES = 1 << 20  # smaller tensors (RoPE tables, scalars) cost more to move than they free


class Moved:
    """A saved tensor in pinned CPU memory: its copy out, the tensor saved just before it in the same
    forward (`before`, the next one backward takes), and its copy back once prefetched."""

    __slots__ = ("host", "device", "done", "before", "back", "arrived", "taken")

    def __init__(self, host: torch.Tensor, device: torch.device, done, before: Moved | None) -> None:
        self.host, self.device, self.done, self.before = host, device, done, before
        self.back: torch.Tensor | None = None
        self.arrived = None
        self.taken = False  # backward has had it (a later prefetch would hold GPU memory nobody takes)


class OffloadedActivations(torch.autograd.graph.saved_tensors_hooks):
    """Inside: saved tensors of at least `min_bytes` leave the GPU until backward needs them."""

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.stream = None
        self.last: Moved | None = None  # the latest tensor moved in the forward under way
        self.moved: list[torch.Size] = []  # shapes of the tensors moved out, for tests
        self.prefetched = 0  # copies back started ahead of backward's need, for tests
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
        self.last = Moved(host, t.device, done, self.last)
        return self.last

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        stream = torch.cuda.current_stream(packed.device)
        if packed.back is not None:  # prefetched
            t, packed.back = packed.back, None
            stream.wait_event(packed.arrived)
            t.record_stream(stream)  # made on the side stream, used (and freed) on this one
        else:
            stream.wait_event(packed.done)
            t = packed.host.to(packed.device, non_blocking=True)
        packed.taken = True
        before, packed.before = packed.before, None
        if before is not None and before.back is None and not before.taken:
            with torch.cuda.stream(self.stream):  # after its own copy out, which ran on this stream
                before.back = before.host.to(before.device, non_blocking=True)
                before.arrived = torch.cuda.Event()
                before.arrived.record(self.stream)
            self.prefetched += 1
        return t


def offload_activations(model: torch.nn.Module, min_bytes: int | None = None) -> OffloadedActivations:
    """Run every forward of `model` with its saved tensors offloaded; the hooks are `model.offloaded`."""
    hooks = model.offloaded = OffloadedActivations(MIN_BYTES if min_bytes is None else min_bytes)
    forward = model.forward

    def offloaded(self, *args, **kwargs):
        hooks.last = None  # each forward's chain of moved tensors starts anew (backward frees it)
        try:
            with hooks:
                return forward(*args, **kwargs)
        finally:
            hooks.last = None

    model.forward = types.MethodType(offloaded, model)
    return hooks
