"""Fused QLoRA blocks for Llama and Qwen2: the MLP (gate, up, SwiGLU, down) and the attention's q,
k, v and o projections as autograd functions that keep only what backward needs.

unsloth's `fast_lora` is the design followed (and beaten on one point): each 4-bit weight is
dequantized when it is needed, in forward and again in backward, and the LoRA products are
applied in the same pass. What autograd keeps, per token of one layer, in the compute dtype c:

    attention q, k, v   the block's input once (c x hidden), for all three projections
    o                   its input (already saved by SDPA: the same storage under sdpa)
    MLP                 the block's input, gate and up (c x (hidden + 2 x intermediate));
                        SwiGLU's output and everything LoRA needs are recomputed in backward;
                        above MLP_TILED_ABOVE tokens only the input (c x hidden): gate and
                        up are recomputed tile by tile (LoRAMLP)

where PEFT over bitsandbytes keeps, behind PEFT's fp32 upcast, gate, silu(gate) and up in fp32,
and for each LoRA module its dropped-out input and its dropout mask. unsloth runs only without
LoRA dropout; here the recipes' dropout (0.05) is applied as PEFT applies it, one mask per module
drawn in PEFT's order from the same generator (so a run equals PEFT's draw for draw), and backward
draws the masks again from the generator state saved in forward instead of keeping them.

Qwen2's blocks are Llama's computation with frozen biases on q, k and v: each projection adds its
bias after the 4-bit matmul, as bitsandbytes does, and backward needs nothing for it. Both attention
classes run transformers' own forward (RoPE, the cache, Qwen2's sliding window, the attention
kernel) with only the projections' calls routed here. A block whose projections are not all 4-bit
(LoRA-wrapped with one plain adapter, or bare), has a trained bias, or is another family's
(StarCoder2's GELU MLP) keeps the plain path (qlora_linear's per-layer functions).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qlcode.kernels import MLP_TILE, MLP_TILED_ABOVE, SWIGLU_ROWS
from qlcode.kernels.qlora_linear import Kernels, compute_dtype, linear_4bit


@dataclass(frozen=True)
class Projection:
    """One 4-bit linear layer and its LoRA adapter as the functions use it (no tensors autograd tracks)."""

    packed: torch.Tensor
    state: object  # bitsandbytes QuantState
    scale: float = 0.0  # LoRA's scaling; 0 and no A/B for a bare 4-bit layer
    dropout: float = 0.0  # LoRA dropout probability, 0 outside training
    bias: torch.Tensor | None = None  # frozen: added to the output, nothing for backward


def rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextmanager
def replayed_rng(device: torch.device, state: torch.Tensor) -> Iterator[None]:
    """The generator as it was when `state` was taken, and as it is now afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        if cuda:
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield


def draw_mask(x: torch.Tensor, p: float, lora: bool) -> torch.Tensor | None:
    """LoRA dropout's mask for x, drawn as nn.Dropout draws it (torch's dropout op, same generator
    use), or None where there is no draw: no LoRA, or p 0 (PEFT's nn.Identity)."""
    return torch.native_dropout(x, p, True)[1] if lora and p > 0 else None


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None, p: float) -> torch.Tensor:
    """dropout(x) for a drawn mask: the same ops, so the same values, as torch's dropout."""
    return x if mask is None else torch.ops.aten.native_dropout_backward(x, mask, 1.0 / (1.0 - p))


def project(x: torch.Tensor, proj: Projection, a: torch.Tensor | None, b: torch.Tensor | None, kernels: Kernels,
            mask: torch.Tensor | None) -> torch.Tensor:
    """x W^T + bias + s (dropout(x) A^T) B^T for 2-d x, in x's dtype, with the dropout mask drawn
    for it; in bitsandbytes' and PEFT's order (the biased 4-bit product, then LoRA's)."""
    y = linear_4bit(x, proj.packed, proj.state, kernels)
    if proj.bias is not None:
        y.add_(proj.bias.to(y.dtype))
    if a is None:
        return y
    xd = apply_mask(x, mask, proj.dropout)
    return torch.addmm(y, xd @ a.to(x.dtype).t(), b.to(x.dtype).t(), alpha=proj.scale)


def project_backward(x: torch.Tensor, grad: torch.Tensor, proj: Projection, a, b, mask, kernels: Kernels,
                     grad_x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(grad_x plus this projection's part, grad A, grad B) for 2-d x and grad, with forward's mask."""
    gb, grad_a, grad_b = lora_backward(x, grad, proj, a, b, mask)
    return input_backward(grad, proj, a, mask, gb, kernels, grad_x), grad_a, grad_b


def lora_backward(x: torch.Tensor, grad: torch.Tensor, proj: Projection, a, b, mask) -> tuple:
    """(grad @ B, LoRA A's gradient, LoRA B's gradient) for 2-d x and grad: the part of the backward
    that needs x, so a caller can free x before the input gradient exists; Nones for a bare layer."""
    if a is None:
        return None, None, None
    ac, bc = a.to(grad.dtype), b.to(grad.dtype)
    xd = apply_mask(x, mask, proj.dropout)
    gb = grad @ bc  # (tokens, r)
    grad_a = (proj.scale * (gb.t() @ xd)).to(a.dtype)
    grad_b = (proj.scale * (grad.t() @ (xd @ ac.t()))).to(b.dtype)
    return gb, grad_a, grad_b


def input_backward(grad: torch.Tensor, proj: Projection, a, mask, gb: torch.Tensor | None, kernels: Kernels,
                   grad_x: torch.Tensor | None) -> torch.Tensor:
    """grad_x plus grad W + s dropout'((grad B) A), with lora_backward's grad @ B (None: a bare layer).
    LoRA's term is made first: its temporaries are gone before the input gradient exists."""
    lora_x = None if gb is None else apply_mask(gb @ a.to(grad.dtype), mask, proj.dropout)
    grad_x = torch.addmm(grad_x, grad, kernels.dequantize(proj.packed, proj.state, grad.dtype)) if grad_x is not None \
        else grad @ kernels.dequantize(proj.packed, proj.state, grad.dtype)  # the weight recomputed, never stored
    return grad_x if lora_x is None else grad_x.add_(lora_x, alpha=proj.scale)


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least fp32, for the elementwise math of bf16/fp16 tensors."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def row_chunks(rows: int) -> Iterator[slice]:
    """SWIGLU_ROWS rows at a time: the SwiGLU's fp32 temporaries exist for one chunk only."""
    return (slice(start, start + SWIGLU_ROWS) for start in range(0, rows, SWIGLU_ROWS))


def swiglu(e: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """silu(e) * g computed in at least fp32, returned in e's dtype (chunk by chunk)."""
    h = torch.empty_like(e)
    for rows in row_chunks(e.shape[0]):
        h[rows] = F.silu(wide(e[rows])) * wide(g[rows])  # copy_ rounds as .to(e.dtype) does
    return h


def swiglu_backward(e: torch.Tensor, g: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of swiglu(e, g) for its gradient dh, in e's dtype, computed in at least fp32:
    de = dh g sigmoid(e) (1 + e (1 - sigmoid(e))), dg = dh e sigmoid(e), chunk by chunk into the
    two outputs (_swiglu_backward_rows)."""
    de, dg = torch.empty_like(e), torch.empty_like(e)
    for rows in row_chunks(e.shape[0]):
        _swiglu_backward_rows(e[rows], g[rows], dh[rows], de[rows], dg[rows])
    return de, dg


def _swiglu_backward_rows(e, g, dh, de, dg) -> None:
    """One chunk of swiglu_backward, written into de and dg. The order of operations is that of
    the expressions (so the values are theirs, bit for bit), in place where it can be and with e, g
    in their own dtype where a product with an fp32 operand widens them exactly: at most four fp32
    arrays of the chunk exist at once (one is the copy of e that CPU's mixed-dtype multiply
    makes), and none outlives the call."""
    sig = torch.sigmoid(wide(e))
    t = (wide(dh) * g).mul_(sig)
    u = torch.rsub(sig, 1).mul_(e).add_(1)
    de.copy_(t.mul_(u))
    del t, u
    dg.copy_((wide(dh) * e).mul_(sig))


class LoRAProjections(torch.autograd.Function):
    """Several 4-bit projections (each with or without LoRA) of one input, saved once: q, k and v.
    `lora` holds A and B of each projection in turn (None, None for a bare one)."""

    @staticmethod
    def forward(ctx, x, projections: tuple[Projection, ...], kernels: Kernels, *lora):
        ctx.projections, ctx.kernels, ctx.rng = projections, kernels, rng_state(x.device)
        ctx.save_for_backward(x, *lora)
        x2 = x.reshape(-1, x.shape[-1])
        outs = [project(x2, p, lora[2 * i], lora[2 * i + 1], kernels, draw_mask(x2, p.dropout, lora[2 * i] is not None))
                for i, p in enumerate(projections)]
        return tuple(o.reshape(*x.shape[:-1], o.shape[-1]) for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        x, *lora = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        with replayed_rng(x.device, ctx.rng):  # forward's masks, drawn again in forward's order
            masks = [draw_mask(x2, p.dropout, lora[2 * i] is not None) for i, p in enumerate(ctx.projections)]
        grad_x, lora_grads = None, []
        for i, (p, g, mask) in enumerate(zip(ctx.projections, grads, masks)):
            g = torch.zeros(x2.shape[0], p.state.shape[0], dtype=x.dtype, device=x.device) if g is None \
                else g.reshape(-1, g.shape[-1]).to(x.dtype)
            grad_x, ga, gb = project_backward(x2, g, p, lora[2 * i], lora[2 * i + 1], mask, ctx.kernels, grad_x)
            lora_grads += [ga, gb]
        return grad_x.reshape(x.shape), None, None, *lora_grads


def gate_up_masks(x: torch.Tensor, gate: Projection, up: Projection, lora) -> list[torch.Tensor | None]:
    """gate's dropout mask for 2-d x, then up's, drawn in that order."""
    return [draw_mask(x, p.dropout, lora[2 * i] is not None) for i, p in enumerate((gate, up))]


def gate_up(x: torch.Tensor, gate: Projection, up: Projection, lora, kernels: Kernels, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """gate(x) and up(x) with their drawn masks: forward's, and a tile's again in backward."""
    return project(x, gate, lora[0], lora[1], kernels, masks[0]), project(x, up, lora[2], lora[3], kernels, masks[1])


class LoRAMLP(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)) with 4-bit weights and LoRA. `lora`: A and B of gate, up and down
    (None, None for a bare one).

    Up to `tile` tokens it runs in one pass and saves x, gate's and up's outputs. More tokens run
    in tiles of `tile` (the MLP works token by token: TiledMLP, from Snowflake's ALST and unsloth):
    forward keeps only x and each tile's generator state, backward computes each tile's gate and
    up again, so the intermediate-wide tensors (gate, up, SwiGLU and their gradients) exist for one
    tile at a time instead of the whole sequence; in either, the SwiGLU's fp32 arithmetic exists for
    SWIGLU_ROWS tokens at a time (swiglu, swiglu_backward). Dropout is drawn
    tile by tile (tile 0's gate, up and down masks, then tile 1's, ...): the draws of this function
    applied to each tile in turn, the same distribution as one pass but not the same draw.
    """

    @staticmethod
    def forward(ctx, x, projections: tuple[Projection, Projection, Projection], kernels: Kernels, tile: int, *lora):
        gate, up, down = projections
        x2 = x.reshape(-1, x.shape[-1])
        ctx.projections, ctx.kernels, ctx.tile, ctx.rng = projections, kernels, tile, []
        y = None
        for start in range(0, max(x2.shape[0], 1), tile):
            ctx.rng.append(rng_state(x.device))
            x_tile = x2[start:start + tile]
            e, g = gate_up(x_tile, gate, up, lora, kernels, gate_up_masks(x_tile, gate, up, lora))
            h = swiglu(e, g)
            y_tile = project(h, down, lora[4], lora[5], kernels, draw_mask(h, down.dropout, lora[4] is not None))
            if start == 0 and x2.shape[0] <= tile:
                y = y_tile
            else:
                y = x2.new_empty(x2.shape[0], y_tile.shape[1]) if y is None else y
                y[start:start + tile] = y_tile
        one_pass = len(ctx.rng) == 1
        ctx.save_for_backward(x, e if one_pass else None, g if one_pass else None, *lora)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, e, g, *lora = ctx.saved_tensors
        tile, x2 = ctx.tile, x.reshape(-1, x.shape[-1])
        grad2 = grad.reshape(-1, grad.shape[-1]).to(x.dtype)
        grad_x, lora_grads = None, [None] * 6
        for i, state in enumerate(ctx.rng):
            rows = slice(i * tile, (i + 1) * tile)
            tile_grads = _mlp_tile_backward(x2[rows], e, g, grad2[rows], ctx.projections, lora, ctx.kernels, state)
            if len(ctx.rng) == 1:
                grad_x = tile_grads[0]
            else:
                grad_x = x2.new_empty(x2.shape) if grad_x is None else grad_x
                grad_x[rows] = tile_grads[0]
            lora_grads = [t if total is None else total + t for total, t in zip(lora_grads, tile_grads[1:])]
            del tile_grads  # before the next tile's
        return grad_x.reshape(x.shape), None, None, None, *lora_grads


def _mlp_tile_backward(x, e, g, grad, projections, lora, kernels: Kernels, state):
    """(grad x, and gate's, up's and down's grad A, grad B) for one tile of 2-d x and grad; e and g
    are gate's and up's saved outputs, or None to compute them again (tiles)."""
    gate, up, down = projections
    with replayed_rng(x.device, state):  # gate's mask, up's, then down's, as forward drew them
        masks = gate_up_masks(x, gate, up, lora)
        if e is None:
            e, g = gate_up(x, gate, up, lora, kernels, masks)
        h = swiglu(e, g)
        down_mask = draw_mask(h, down.dropout, lora[4] is not None)
    # each intermediate-wide tensor is dropped after its last use (e and g are only the tiles')
    gb, grad_ad, grad_bd = lora_backward(h, grad, down, lora[4], lora[5], down_mask)
    del h
    dh = input_backward(grad, down, lora[4], down_mask, gb, kernels, None)
    del gb, down_mask
    de, dg = swiglu_backward(e, g, dh)
    del e, g, dh
    grad_x, grad_ag, grad_bg = project_backward(x, de, gate, lora[0], lora[1], masks[0], kernels, None)
    del de
    grad_x, grad_au, grad_bu = project_backward(x, dg, up, lora[2], lora[3], masks[1], kernels, grad_x)
    return grad_x, grad_ag, grad_bg, grad_au, grad_bu, grad_ad, grad_bd


def block_projections(block: torch.nn.Module, names: tuple[str, ...]) -> tuple[tuple[Projection, ...], list, torch.dtype] | None:
    """The block's projections as the functions take them, their LoRA weights (A, B per projection)
    and the compute dtype outside autocast; None where any projection needs the plain path: not
    4-bit, a trained bias (PEFT's bias="all" or "lora_only"), hooks (PEFT's mixed-adapter
    batches), or a LoRA that is disabled, merged, DoRA or several adapters."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    projections, lora, dtype = [], [], None
    for name in names:
        m = getattr(block, name)
        if m._forward_pre_hooks or m._forward_hooks:
            return None
        if isinstance(m, LoraLinear4bit):
            active = m.active_adapters
            if m.disable_adapters or m.merged or len(active) != 1 or m.use_dora.get(active[0]):
                return None
            adapter, base = active[0], m.base_layer
            drop = m.lora_dropout[adapter]
            p = drop.p if isinstance(drop, torch.nn.Dropout) and drop.training else 0.0
            projections.append(Projection(base.weight.data, base.weight.quant_state, m.scaling[adapter], p, frozen_bias(base)))
            lora += [m.lora_A[adapter].weight, m.lora_B[adapter].weight]
            dtype = dtype or m.lora_A[adapter].weight.dtype
        elif isinstance(m, bnb.nn.Linear4bit):
            base = m
            projections.append(Projection(m.weight.data, m.weight.quant_state, bias=frozen_bias(m)))
            lora += [None, None]
        else:
            return None
        if base.bias is not None and base.bias.requires_grad:
            return None
        dtype = dtype or base.compute_dtype
    return tuple(projections), lora, dtype


def frozen_bias(layer: torch.nn.Module) -> torch.Tensor | None:
    """The layer's bias as a plain tensor: the functions add it without autograd tracking it."""
    return None if layer.bias is None else layer.bias.detach()


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Replacement forward of LlamaMLP and Qwen2MLP."""
    found = block_projections(self, ("gate_proj", "up_proj", "down_proj"))
    if found is None:
        return self._qlcode_original_forward(x)
    projections, lora, dtype = found
    tokens = max(x.numel() // x.shape[-1], 1)
    x_cast = x.to(compute_dtype(x, dtype or x.dtype))  # autocast's dtype: asked before it is turned off
    with torch.autocast(x.device.type, enabled=False):  # the function casts for itself
        y = LoRAMLP.apply(x_cast, projections, self._qlcode_kernels, MLP_TILE if tokens > MLP_TILED_ABOVE else tokens, *lora)
    return y.to(x.dtype)


@contextmanager
def _calls_returning(modules: dict[torch.nn.Module, object]) -> Iterator[None]:
    """Each module's calls run the given forward while inside (its own forward afterwards)."""
    saved = {m: m.__dict__.get("forward") for m in modules}
    for m, forward in modules.items():
        m.forward = forward
    try:
        yield
    finally:
        for m, forward in saved.items():
            if forward is None:
                del m.forward
            else:
                m.forward = forward


def _attention_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    """Replacement forward of LlamaAttention and Qwen2Attention: q, k, v (and o) through the fused
    functions, the rest (RoPE, the cache, the sliding window, the attention kernel) transformers'
    own forward."""
    qkv = block_projections(self, ("q_proj", "k_proj", "v_proj"))
    o = block_projections(self, ("o_proj",))
    if qkv is None or o is None:
        return self._qlcode_original_forward(hidden_states, *args, **kwargs)
    (projections, lora, dtype), kernels = qkv, self._qlcode_kernels
    x = hidden_states.to(compute_dtype(hidden_states, dtype or hidden_states.dtype))  # before autocast is off
    with torch.autocast(x.device.type, enabled=False):
        q, k, v = LoRAProjections.apply(x, projections, kernels, *lora)

    def o_forward(a: torch.Tensor) -> torch.Tensor:
        (o_projection,), o_lora, o_dtype = o
        a = a.to(compute_dtype(a, o_dtype or a.dtype))
        with torch.autocast(a.device.type, enabled=False):
            (y,) = LoRAProjections.apply(a, (o_projection,), kernels, *o_lora)
        return y.to(hidden_states.dtype)

    outputs = {self.q_proj: lambda _: q, self.k_proj: lambda _: k, self.v_proj: lambda _: v, self.o_proj: o_forward}
    with _calls_returning(outputs):
        return self._qlcode_original_forward(hidden_states, *args, **kwargs)


def patch_blocks(model: torch.nn.Module, kernels: Kernels) -> int:
    """Route Llama's and Qwen2's MLP and attention blocks through the fused functions (in place, as
    qlora_linear.patch_model does for single layers); returns how many blocks. Other families'
    blocks are left to the plain path, with one line saying so."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP

    from qlcode.progress import console

    forwards = {LlamaMLP: _mlp_forward, Qwen2MLP: _mlp_forward, LlamaAttention: _attention_forward,
                Qwen2Attention: _attention_forward}
    count = 0
    for module in model.modules():
        forward = forwards.get(type(module))
        if forward is _mlp_forward and module.config.hidden_act not in ("silu", "swish"):
            continue
        if forward is not None and "_qlcode_original_forward" not in module.__dict__:
            module._qlcode_original_forward = module.forward
            module._qlcode_kernels = kernels
            module.forward = types.MethodType(forward, module)
            count += 1
    if count == 0:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        console.print(f"quant.fused_blocks: {kind} keeps the plain path (the fused QLoRA blocks are Llama's and Qwen2's)", soft_wrap=True)
    return count
