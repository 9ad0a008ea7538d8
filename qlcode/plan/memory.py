"""The memory a training run needs, part by part, from the model's shapes and the run's settings.

Weights, LoRA, gradients and optimizer state are counted exactly as bitsandbytes, PEFT and the
optimizers allocate them (tests/test_real_size.py compares them with a real 4-bit model's bytes).
Activations count the tensors autograd saves for backward in a Llama layer under PEFT's LoRA
(tests/test_plan.py compares them with what a CPU run saves); logits, the backward pass's
working set and the CUDA overhead are stated estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qlcode.kernels import MLP_TILE, MLP_TILED_ABOVE, SWIGLU_ROWS
from qlcode.plan.shapes import Shapes
from qlcode.plan.startup import RESIDENT, startup_line

GiB = 2**30
# The CUDA context (about 0.5 GiB with torch's kernels loaded) and the caching allocator's
# slack between reserved and allocated memory: a stated constant, not a measurement.
CUDA_OVERHEAD = 1.0 * GiB
BLOCK_4BIT = 64  # bitsandbytes' blocksize for 4-bit weights
BLOCK_NESTED = 256  # ... for the 8-bit absmax of double quantization
BLOCK_OPTIM_8BIT = 256  # ... for 8-bit optimizer state
MIN_8BIT_SIZE = 4096
LOGPROB_TILE = (4096, 32768)  # tokens x vocabulary entries per tile of TRL's fused LM head  # bitsandbytes' 8-bit optimizers keep fp32 state for smaller tensors
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_fc", "c_proj")  # c_*: StarCoder2

# Sequences in one forward pass, per training method (qlcode/methods): DPO concatenates chosen and
# rejected; TRL's GRPO micro batch already counts completions (num_generations per prompt). A new
# method adds its line here; one not listed counts one sequence per micro-batch row.
SEQUENCES: dict[str, Callable[[Settings], int]] = {
    "sft": lambda s: s.micro_batch,
    "dpo": lambda s: 2 * s.micro_batch,
    "grpo": lambda s: s.micro_batch,
}


@dataclass(frozen=True)
class Settings:
    """What memory depends on in a run, as plain values (a recipe becomes these in `settings`)."""

    bits: int | None = 4
    double_quant: bool = True
    weight_bytes: int = 2  # unquantized weights before PEFT's fp32 upcast (bf16 on GPUs)
    compute_bytes: int = 2  # activations: bf16/fp16 autocast on GPUs, fp32 on CPU
    device: str = "cuda"
    lora_r: int = 16
    targets: tuple[str, ...] = LORA_MODULES
    dora: bool = False
    dropout: float = 0.05
    modules_to_save: tuple[str, ...] = ()
    optimizer: str = "paged_adamw_8bit"
    micro_batch: int = 1
    accumulation: int = 1  # no memory of its own: suggestions keep micro_batch x accumulation
    max_length: int = 2048
    checkpointing: bool = True
    attention: str = "sdpa"
    method: str = "sft"
    fused: bool = False  # Llama's and Qwen2's MLP and q/k/v/o as fused QLoRA blocks (quant.fused_blocks with qlcode's kernels)
    mlp_tile: int = MLP_TILE  # the fused MLP's tile, in tokens ...
    mlp_tiled_above: int = MLP_TILED_ABOVE  # ... for micro batches of more tokens than this
    offload: bool = False  # train.offload_activations
    packing: bool = False  # data.packing: one padding-free row per micro batch
    vllm_share: float = 0.0  # of the GPU's memory, held by vLLM colocated for GRPO's generation (train.grpo.vllm)
    init: str = "default"  # lora.init: pissa, olora and loftq decompose each target weight at start-up (plan/startup.py)

    @property
    def sequences(self) -> int:
        return SEQUENCES.get(self.method, SEQUENCES["sft"])(self)

    @property
    def tokens(self) -> int:
        return self.sequences * self.max_length

    @property
    def mlp_tiled(self) -> bool:
        return self.fused and self.bits == 4 and self.tokens > self.mlp_tiled_above

    @property
    def upcast_bytes(self) -> int:
        """PEFT's prepare_model_for_kbit_training casts every non-quantized weight to fp32."""
        return 4 if self.bits is not None else self.weight_bytes


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    detail: str


@dataclass
class Plan:
    shapes: Shapes
    settings: Settings
    parts: list[Part] = field(default_factory=list)
    host: list[Part] = field(default_factory=list)  # CPU memory the run adds (offloaded activations)
    startup: Part | None = None  # lora.init's transient before training (plan/startup.py): not in the total

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> int:
        return next(p.bytes for p in self.parts if p.name == name)


def quantized_bytes(out_features: int, in_features: int, s: Settings) -> int:
    """Bytes of one linear weight as bitsandbytes stores it, with its quantization state."""
    n = out_features * in_features
    if s.bits is None:
        return n * s.weight_bytes
    if s.bits == 8:
        return n + 4 * out_features  # int8 weight + fp32 scale per row (SCB)
    blocks = math.ceil(n / BLOCK_4BIT)
    packed = math.ceil(n / 2)  # two 4-bit codes per byte
    code = 16 * 4  # the NF4/FP4 code book, fp32, one per layer
    if not s.double_quant:
        return packed + 4 * blocks + code
    # absmax in uint8 per block, the second level's fp32 absmax per 256 blocks, the fp32 offset,
    # and the 8-bit dynamic code book (256 fp32) each layer's nested state holds a copy of
    return packed + blocks + 4 * math.ceil(blocks / BLOCK_NESTED) + 4 + 256 * 4 + code


def lora_tensors(shapes: Shapes, s: Settings) -> list[int]:
    """Element counts of each trainable tensor: LoRA A and B (and DoRA's magnitude) per target
    module and layer, then full copies of modules_to_save."""
    sizes = []
    for name, (out_f, in_f) in shapes.linears().items():
        if name in s.targets:
            per_layer = [s.lora_r * in_f, out_f * s.lora_r] + ([out_f] if s.dora else [])
            sizes += per_layer * shapes.layers
    embedding = shapes.vocab * shapes.hidden
    sizes += [embedding for m in s.modules_to_save if m in ("lm_head", "embed_tokens")]
    return sizes


def optimizer_bytes(sizes: list[int], optimizer: str) -> int:
    """Optimizer state: torch AdamW keeps two fp32 moments and a step tensor per parameter tensor;
    bitsandbytes' 8-bit AdamW two uint8 moments plus an fp32 absmax per 256-block of each (fp32
    moments for tensors under 4096 elements) and the two 256-entry code books they share."""
    if optimizer == "adamw_torch":
        return sum(8 * n + 4 for n in sizes)
    total, any_8bit = 0, False
    for n in sizes:
        if n < MIN_8BIT_SIZE:
            total += 8 * n
        else:
            any_8bit = True
            total += 2 * n + 2 * 4 * math.ceil(n / BLOCK_OPTIM_8BIT)
    return total + (2 * 256 * 4 if any_8bit else 0)


def layer_activation_bytes(shapes: Shapes, s: Settings) -> int:
    """Bytes autograd saves per token in one decoder layer (without checkpointing).

    Residual stream and norms run in the upcast dtype p (fp32 under QLoRA), attention in the
    compute dtype c. A quantized linear returns its input's dtype (bitsandbytes' Linear4bit casts
    back, and so do qlcode's patched forwards), and under QLoRA its input, the RMSNorm's output, is
    in p: so the MLP's gate, silu(gate) and up are saved in p, not c. The 4-bit matmul saves no
    input (bitsandbytes dequantizes the weight again in backward); a LoRA module saves its
    (dropped-out) input in c and its rank-r hidden; modules sharing an input share one saved copy
    when no dropout or cast separates them. DoRA's per-forward weight norms are not counted.
    The fused blocks (s.fused) keep each block's input once in c, and the MLP's gate and up in c
    (only its input above s.mlp_tiled_above tokens: tiles recompute them); LoRA's products and dropout
    masks are recomputed in backward.
    """
    h, f, p, c = shapes.hidden, shapes.intermediate, s.upcast_bytes, s.compute_bytes
    q, kv = shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    mask = 4 if s.device == "cpu" else 1  # dropout masks: the input's dtype on CPU, bool on CUDA
    width = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": f,
             "c_fc": h, "c_proj": f}
    linears = shapes.linears()

    def lora_inputs(group: tuple[str, ...], shared_with_saved: bool) -> int:
        targeted = [m for m in group if m in s.targets and m in linears]
        if not targeted:
            return 0
        w = width[targeted[0]]
        if s.dropout > 0:
            return len(targeted) * (mask + c) * w
        if shared_with_saved:
            return 0
        return p * w if p == c else len(targeted) * c * w

    total = 2 * (p * h + 4)  # two RMSNorms: their fp32 input and 1/rms
    if s.attention == "eager":  # keys and values repeated to every query head, the fp32 softmax and its copy
        total += 3 * c * q + (4 + (c if c != 4 else 0)) * shapes.heads * s.max_length
    else:  # SDPA / flash: q, k, v, the output and the log-sum-exp, no sequence-squared matrix
        total += c * (2 * q + 2 * kv) + 4 * shapes.heads
    if s.fused and s.bits == 4:  # qlcode.kernels.fused_blocks: each block's input, gate and up (untiled), in c
        return total + c * (2 * h + (0 if s.mlp_tiled else 2 * f)) + (c * q if s.attention == "eager" else 0)  # o's input: SDPA's output
    # gate, silu(gate), up: in p behind quantized linears, in c behind torch's under autocast. They
    # were counted in c until the first GPU measurement (H100, 2026-11-26,
    # benchmarks/results/2026-11-26-h100/plan_memory.md: CodeLlama-7B, r16 all-linear) found the
    # plan 11-23% low without checkpointing; counted in p, measured/plan is 0.995-0.998 there, and
    # 0.96-0.98 with checkpointing (where one recomputed layer holds them). The CPU test cannot
    # tell (p == c in fp32); tests/test_plan.py checks their dtype under CPU autocast instead.
    # A GELU MLP (StarCoder2) saves c_fc's output and GELU's, not three: no gate.
    total += (3 if shapes.gated else 2) * (p if s.bits is not None else c) * f
    total += lora_inputs(("q_proj", "k_proj", "v_proj"), False)
    total += lora_inputs(("o_proj",), s.attention != "eager")  # SDPA saved the attention output already
    total += lora_inputs(("gate_proj", "up_proj"), False) + lora_inputs(("c_fc",), False)
    total += lora_inputs(("down_proj",), False) + lora_inputs(("c_proj",), False)
    total += c * s.lora_r * sum(m in s.targets for m in linears)  # each LoRA A's output
    if s.bits == 8:  # bitsandbytes' int8 matmul keeps each input, cast to fp16 (not checked by a test)
        total += 2 * (5 * h + q + f)
    return total


def lm_head_bytes(shapes: Shapes, s: Settings) -> int:
    """TRL 1.16 scores tokens through the LM head in tiles instead of materialising every logit
    (trl/kernels/chunked_logprob.py): a buffer of 4096 tokens x 32768 vocabulary entries in the
    compute dtype, each vocabulary chunk of the head's weight cast to it, and the fp32 gradient of
    the head's input. Its torch fallback (CPU) adds fp32 working copies of the tile."""
    rows, cols = min(s.tokens, LOGPROB_TILE[0]), min(shapes.vocab, LOGPROB_TILE[1])
    cast = cols * shapes.hidden * s.compute_bytes if s.upcast_bytes != s.compute_bytes else 0
    fallback = 2 * 4 * rows * cols if s.device == "cpu" else 0
    return rows * LOGPROB_TILE[1] * s.compute_bytes + cast + s.tokens * shapes.hidden * 4 + fallback


def fused_mlp_backward_bytes(shapes: Shapes, s: Settings) -> int:
    """The fused MLP's backward (fused_blocks.LoRAMLP) at its peak, beyond what it saved and the
    gradient it receives, for one tile (s.mlp_tile tokens; untiled, all of them). Each
    intermediate-wide tensor is dropped after its last use, so the peak is the larger of two
    phases, per token of the tile in the compute dtype c:
      the SwiGLU gradient (fused_blocks.swiglu_backward): down's output gradient and the two it
        makes (3 c x intermediate), and the fp32 temporaries of one chunk of SWIGLU_ROWS tokens
        (four arrays of the intermediate width in bf16/fp16, one of them the copy of gate's output
        CPU's mixed-dtype multiply makes, which a CUDA kernel may not; three in fp32);
      down's input gradient with LoRA: the gradient, (grad B) A and its dropped-out copy, down's
        dropout mask (bool) and grad B (r wide).
    Held through both: gate's and up's outputs when tiled (recomputed; untiled they are saved,
    counted as activations), the bool dropout masks of gate's and up's input, down's LoRA gradients
    (fp32) and, when tiled, the whole input gradient (c x hidden per token) and the sums of the
    earlier tiles' LoRA gradients. Exact in bf16, fp16 and fp32 against what a CPU run allocates
    (tests/test_fused_qlora.py), but for the 0-dim tensors CPU ops wrap Python numbers in (a few
    bytes); on CUDA the dropout and the widening are single kernels, so the count is an upper bound."""
    h, f, c, r = shapes.hidden, shapes.intermediate, s.compute_bytes, s.lora_r
    lora = {m: m in s.targets for m in ("gate_proj", "up_proj", "down_proj")}
    drop, down = s.dropout > 0, lora["down_proj"]
    rows = s.mlp_tile if s.mlp_tiled else s.tokens
    swiglu = rows * 3 * c * f + (4 if c < 4 else 3) * 4 * f * min(SWIGLU_ROWS, rows)
    down_input = rows * (c * f * (1 + down * (1 + drop)) + down * (drop * f + c * r))
    lora_grads = 4 * r * (h + f)  # one projection's A (r x in) and B (out x r) in fp32: gate, up and down alike
    held = rows * (2 * c * f * s.mlp_tiled + drop * h * (lora["gate_proj"] + lora["up_proj"])) + down * lora_grads
    total = held + max(swiglu, down_input)
    if s.mlp_tiled:
        total += s.tokens * c * h + sum(lora.values()) * lora_grads
    return total


def layer_backward_bytes(shapes: Shapes, s: Settings, per_layer: int) -> int:
    """One decoder layer's backward: its activations recomputed (under checkpointing), the
    gradients in flight (the hidden state's in and out, the MLP's widest two), and the largest
    base weight dequantized for the input gradient. An estimate, checked on GPUs by
    benchmarks/plan_memory.py.

    With the fused blocks the widest part is the larger of two phases. The MLP's: its output's
    gradient cast to c and its backward's own peak (fused_mlp_backward_bytes, exact on CPU). The
    attention's (an estimate from torch's flash-attention backward): the gradients of q, k, v (of
    k and v also at every query head under grouped-query attention, before they are summed), of
    the attention's output and a contiguous copy of it, and the fp32 accumulator of q's.
    """
    dequantized = max(o * i for o, i in shapes.linears().values()) * s.compute_bytes if s.bits else 0
    residual = s.tokens * 2 * s.upcast_bytes * shapes.hidden
    if s.fused and s.bits == 4:
        c, q, kv = s.compute_bytes, shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
        mlp = s.tokens * c * shapes.hidden + fused_mlp_backward_bytes(shapes, s)
        attention = s.tokens * (c * (3 * q + 2 * kv + (2 * q if kv < q else 0)) + 4 * q)
        in_flight = residual + max(mlp, attention)
    else:
        in_flight = residual + s.tokens * 2 * s.compute_bytes * shapes.intermediate
    return (s.tokens * per_layer if s.checkpointing else 0) + in_flight + dequantized


def plan(shapes: Shapes, s: Settings) -> Plan:
    """Every part of a run's memory on one device."""
    if s.fused and not shapes.fusable:  # fused_blocks patches Llama's and Qwen2's MLP and attention only
        s = replace(s, fused=False)
    out = Plan(shapes, s)
    add = lambda name, n, detail: out.parts.append(Part(name, int(n), detail))  # noqa: E731
    linears = shapes.linears()
    kind = {4: f"4-bit{' + double quant' if s.double_quant else ''}", 8: "8-bit", None: f"{8 * s.weight_bytes}-bit"}[s.bits]
    add("base weights", shapes.layers * sum(quantized_bytes(o, i, s) for o, i in linears.values()),
        f"{len(linears)} linear layers x {shapes.layers} in {kind}, with their quantization state")
    embeddings = shapes.vocab * shapes.hidden * (1 if shapes.tied_embeddings else 2)
    norms = shapes.hidden * (2 * shapes.layers + 1)
    trained = any(m in ("embed_tokens", "lm_head") for m in s.modules_to_save)
    embedding_bytes = s.upcast_bytes if trained else s.weight_bytes  # frozen ones keep their loaded dtype (models.keep_dtypes)
    add("embeddings, lm_head, norms", embeddings * embedding_bytes + norms * s.upcast_bytes,
        f"unquantized: embeddings and lm_head in {'fp32' if embedding_bytes == 4 else 'bf16/fp16'}, norms in "
        + ("fp32" if s.upcast_bytes == 4 else "bf16/fp16") + (" (PEFT upcasts them for k-bit training)" if s.bits else ""))
    add("buffers", 2 * 4 * shapes.head_dim // 2, "RoPE inverse frequencies, and their original copy")
    sizes = lora_tensors(shapes, s)
    params = sum(sizes)
    method = "DoRA" if s.dora else "LoRA"
    targets = sum(m in s.targets for m in shapes.linears())
    add(f"{method} weights", 4 * params, f"{params:,} fp32 parameters (r {s.lora_r}, {targets} modules x {shapes.layers} layers"
        + (f", + {', '.join(s.modules_to_save)}" if s.modules_to_save else "") + ")")
    add(f"{method} gradients", 4 * params, "fp32")
    add("optimizer state", optimizer_bytes(sizes, s.optimizer), s.optimizer
        + (" (paged: can spill to CPU memory)" if s.optimizer.startswith("paged") else ""))
    if s.device == "cuda" and s.compute_bytes != 4:
        add("autocast weight copies", s.compute_bytes * params, "LoRA weights cast for bf16/fp16 matmuls")
    tokens, per_layer, h = s.tokens, layer_activation_bytes(shapes, s), shapes.hidden
    seq = f"{s.sequences} x {s.max_length} tokens"
    head = tokens * (2 * s.upcast_bytes * h + 8)  # final norm's input, the LM head's input and log-sum-exp
    inputs = tokens * shapes.layers * s.upcast_bytes * h  # each layer's input, kept by checkpointing
    if s.checkpointing and s.offload:
        add("activations", 2 * inputs // shapes.layers + head,
            f"checkpointing, offloaded: two layers' inputs in flight ({seq})")
        out.host.append(Part("offloaded activations", inputs, f"each layer's input in pinned CPU memory ({seq})"))
    elif s.checkpointing:
        add("activations", inputs + head, f"checkpointing: each layer's input ({seq})")
    else:
        add("activations", tokens * shapes.layers * per_layer + head, f"every layer's saved tensors ({seq}, {s.attention})")
    if s.packing and s.attention in ("sdpa", "eager"):  # flash attention takes the sequence bounds instead
        mask = 1 if s.attention == "sdpa" else s.compute_bytes
        add("packed attention mask", mask * tokens ** 2, f"the block mask transformers builds over the packed row "
            f"({tokens:,} tokens, {'boolean' if mask == 1 else 'additive'})")
    lm_head, layer = lm_head_bytes(shapes, s), layer_backward_bytes(shapes, s, per_layer)
    add("peak working set", max(lm_head, layer),
        f"the larger of: LM head {lm_head / GiB:.2f} GiB (TRL's tiled log-probs), one layer's backward {layer / GiB:.2f} GiB")
    if s.device == "cuda":
        add("CUDA context + allocator", CUDA_OVERHEAD, "stated constant")
    if s.init != "default":
        resident = sum(part.bytes for part in out.parts if part.name in RESIDENT)
        out.startup = Part(f"lora.init: {s.init}", *startup_line(shapes, s.targets, s.init, s.weight_bytes, resident))
    return out


def settings(recipe, device: str = "cuda") -> Settings:
    """A recipe's settings as the plan sees them, for a CUDA GPU (bf16) or the CPU (fp32)."""
    sizes = {"bf16": 2, "fp16": 2, "fp32": 4}
    auto = 2 if device == "cuda" else 4
    weight = auto if recipe.model.dtype == "auto" else sizes[recipe.model.dtype]
    lora = recipe.lora
    targets = LORA_MODULES if lora.target_modules == "all-linear" else tuple(lora.target_modules)
    r, dora = lora.r, lora.dora
    if lora.adapter:
        r, targets, dora = _adapter_lora(lora.adapter, r, targets, dora)
    return Settings(
        bits=recipe.quant.bits,
        double_quant=recipe.quant.double_quant,
        weight_bytes=weight,
        compute_bytes=weight if recipe.quant.compute_dtype == "auto" else sizes[recipe.quant.compute_dtype],
        device=device,
        lora_r=r,
        targets=targets,
        dora=dora,
        dropout=lora.dropout,
        modules_to_save=tuple(lora.modules_to_save),
        optimizer=recipe.train.optimizer,
        micro_batch=recipe.train.micro_batch_size,
        accumulation=recipe.train.gradient_accumulation_steps,
        max_length=recipe.data.max_length,
        checkpointing=recipe.train.gradient_checkpointing,
        attention=recipe.model.attn_implementation,
        method=recipe.train.method,
        fused=fused_blocks(recipe, device),
        offload=recipe.train.offload_activations,
        packing=recipe.data.packing,
        vllm_share=recipe.train.grpo.vllm_gpu_memory_utilization if recipe.train.method == "grpo" and recipe.train.grpo.vllm else 0.0,
        init=lora.init,
    )


def fused_blocks(recipe, device: str) -> bool:
    """Whether the run trains through the fused QLoRA blocks: qlcode's kernels (quant.kernels triton,
    or auto on a GPU, where the self-check is assumed to pass) with quant.fused_blocks."""
    q = recipe.quant
    return q.bits == 4 and q.fused_blocks and (q.kernels == "triton" or (q.kernels == "auto" and device == "cuda"))


def _adapter_lora(adapter: str, r: int, targets: tuple[str, ...], dora: bool) -> tuple[int, tuple[str, ...], bool]:
    """A continued adapter's own rank and targets; the recipe's until that adapter exists."""
    import json
    from pathlib import Path

    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        return r, targets, dora
    config = json.loads(path.read_text())
    found = config.get("target_modules") or targets
    return config.get("r", r), LORA_MODULES if found == "all-linear" else tuple(found), bool(config.get("use_dora", dora))
