"""Loading bases and tokenizers: quantization, LoRA and kernel patching, from plain arguments.

Training turns a recipe's sections into these arguments (qlcode.train); inference reads them from
a run's own recipe (qlcode.inference), so a model is always loaded the way it was trained.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from qlcode import builtin
from qlcode.errors import ModelError
from qlcode.families import family_of_tokenizer, model_type_of, template_name
from qlcode.placement import DTYPES, Placement, placement

if TYPE_CHECKING:
    from qlcode.recipe import Recipe

M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class Quantization:
    """How the base's linear layers are stored and computed (the recipe's `quant:` keys)."""

    bits: int | None = 4  # 4, 8, or None for a full-precision base
    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"
    storage_dtype: str = "uint8"
    kernels: str = "auto"  # triton | bitsandbytes | auto (triton on CUDA)
    fused_blocks: bool = True  # with the Triton kernels: Llama's and Qwen2's MLP and q/k/v/o as fused QLoRA blocks


def base_path(spec: str) -> str:
    """builtin:NAME -> the packaged directory; a local directory or a Hub id is passed through."""
    return str(builtin.model_path(spec)) if spec.startswith("builtin:") else spec


def load_tokenizer(base: str, revision: str | None = None, template: str = "raw") -> AutoTokenizer:
    """The tokenizer of `base` (a model or an adapter directory) with its family's quirks settled.

    A tokenizer without a pad token pads with its family's (qlcode.families: Code Llama's <unk>,
    which the model never needs to predict). Padding with eos would be harmless for the loss
    (TRL masks padding by position) but makes `generate` and batching ambiguous about where a
    sequence ends. Under the `instruct` template the family's chat template is set (and its
    Instruct eos, e.g. Qwen's <|im_end|>, so that generation stops where an answer ends). Training pads on
    the right; the eos that ends every answer is appended by TRL (prompt/completion rows) or by the
    chat template (conversations). transformers 5 gives SentencePiece tokenizers (Llama's) their
    leading "▁" on a text's first segment only, so "<s>[INST]" lost the "▁[" Code Llama Instruct was
    trained on; every segment gets it again, as in transformers 4 and Meta's reference.
    """
    try:
        tok = AutoTokenizer.from_pretrained(base_path(base), revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.base: cannot load a tokenizer from {base!r}: {e}") from None
    family = family_of_tokenizer(tok, model_type_of(base_path(base)))
    if tok.pad_token is None and family.pad in tok.get_vocab():
        tok.pad_token = family.pad
    if tok.pad_token is None:
        if tok.unk_token is not None and tok.unk_token != tok.eos_token:
            tok.pad_token = tok.unk_token
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    spm = getattr(getattr(tok, "backend_tokenizer", None), "pre_tokenizer", None)
    if isinstance(spm, pre_tokenizers.Metaspace) and spm.prepend_scheme == "first":
        spm.prepend_scheme = "always"  # "<s>[INST]" -> 1, 518 ("▁["): Meta encodes each turn as a text of its own
    if template_name(template) == "instruct":
        tok.chat_template = family.chat_template
        if family.turn_end is not None:
            tok.eos_token = family.turn_end
    return tok


def quantization_config(quant: Quantization, place: Placement) -> BitsAndBytesConfig | None:
    if quant.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=place.compute_dtype,
            bnb_4bit_quant_storage=torch.uint8 if quant.storage_dtype == "uint8" else DTYPES[quant.storage_dtype],
        )
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def disable_cpu_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference GEMV.

    On CPUs with avx512_bf16, a Linear4bit forward in eval mode without grad (right after loading,
    in `generate`, in an evaluation) repacks the weight for a kernel with no backward; training
    afterwards gives silently wrong LoRA gradients. Returns the number of layers changed.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def load_base(base: str, quant: Quantization = Quantization(), revision: str | None = None, dtype: str = "auto",
              attn_implementation: str = "sdpa", rope_theta: float | None = None, rope_scaling: dict | None = None,
              max_position_embeddings: int | None = None) -> PreTrainedModel:
    """The base model on this process's device, quantized or not, with its RoPE overrides applied."""
    place = placement(dtype, quant.compute_dtype)
    path = base_path(base)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.base: cannot load {base!r}: {e}") from None
    if rope_theta is not None or rope_scaling is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        if rope_theta is not None:
            rope["rope_theta"] = rope_theta
        if rope_scaling is not None:
            rope.update(rope_type=rope_scaling["type"], factor=rope_scaling["factor"])
        config.rope_parameters = rope
    if max_position_embeddings is not None:
        config.max_position_embeddings = max_position_embeddings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(torch_dtype|fast path|kernels).*")
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            revision=revision,
            dtype=place.dtype,
            quantization_config=quantization_config(quant, place),
            device_map=place.device_map,
            attn_implementation=attn_implementation,
        )
    disable_cpu_repacking(model)
    return model


def quantization_of(recipe: Recipe) -> Quantization:
    return Quantization(**recipe.quant.model_dump())


def load_recipe_base(recipe: Recipe, quant: Quantization | None = None) -> PreTrainedModel:
    """The base as a recipe (a training run's, or an adapter's own recipe.yaml) says: the one place
    where recipe sections become load_base's arguments."""
    m = recipe.model
    return load_base(m.base, quant or quantization_of(recipe), m.revision, m.dtype, m.attn_implementation, m.rope_theta,
                     m.rope_scaling.model_dump() if m.rope_scaling else None, m.max_position_embeddings)


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct names of the linear layers LoRA can target (q_proj, ..., down_proj)."""
    import bitsandbytes as bnb

    kinds = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds) and n != "lm_head"})


def check_targets(model: torch.nn.Module, target_modules: str | list[str]) -> None:
    """A target that matches no module is a typo, never a silent no-op (PEFT adapts the others)."""
    if target_modules == "all-linear":
        return
    names = linear_names(model)
    unknown = [t for t in target_modules if t not in names]
    if unknown:
        raise ModelError(f"lora.target_modules: {', '.join(unknown)} matches no module of this model; "
                         f"its linear layers are: {', '.join(names)} (or use all-linear)")


def with_lora(base: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: str | list[str],
              rslora: bool = False, dora: bool = False, modules_to_save: list[str] = (), adapter: str | None = None,
              gradient_checkpointing: bool = True, seed: int = 42, init: str = "default") -> PeftModel:
    """Make the base trainable through LoRA: a new adapter, or `adapter` (a directory) to continue one.

    `init` (lora.init): default; pissa or olora, PEFT's initialisations from the base's own weights (SVD, QR),
    which move that part out of the base: save such an adapter with `save_initial_adapter` first and convert it
    with it when saving (qlcode.runs); loftq (qlcode.loftq), on a 4-bit base, fits A and B to the quantization
    error from the base's safetensors files, on the device the base is on (the base itself is not changed)."""
    quantized = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
    if quantized:
        frozen = frozen_embeddings(base, modules_to_save)
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_dtypes(base, frozen)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError(f"lora.adapter: {adapter!r} holds no adapter_config.json; train that adapter first")
        return PeftModel.from_pretrained(base, adapter, is_trainable=True)
    check_targets(base, target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_rslora=rslora,
        use_dora=dora,
        modules_to_save=list(modules_to_save) or None,
        task_type="CAUSAL_LM",
        init_lora_weights=init if init in ("pissa", "olora") else True,
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    if init == "loftq":
        from qlcode.loftq import loftq_init

        local = Path(base.config.name_or_path)  # a Hub base is found in the cache by PEFT's loader; a local one by its file
        loftq_init(model, str(local / "model.safetensors") if local.is_dir() else None)
    return model


def mutates_base(model: PeftModel) -> bool:
    """Whether the adapter's initialisation changed the base weights (PiSSA, OLoRA): it must be converted when saved."""
    return str(model.peft_config["default"].init_lora_weights).lower() in ("pissa", "olora")


def save_initial_adapter(model: PeftModel, path: Path) -> None:
    """The adapter as initialised, before any step, for PEFT's conversion of a PiSSA/OLoRA adapter to a plain LoRA.

    Saved with init_lora_weights True, as PEFT asks: loading it must not decompose the (already residual) base again."""
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(str(path), selected_adapters=["default"])
    finally:
        config.init_lora_weights = init


def frozen_embeddings(base: PreTrainedModel, modules_to_save: list[str]) -> dict[torch.nn.Parameter, torch.dtype]:
    """The embeddings and LM head that stay frozen (not in modules_to_save), with their loaded dtype."""
    modules = {"embed_tokens": base.get_input_embeddings(), "lm_head": base.get_output_embeddings()}
    if any(name in modules_to_save for name in modules):  # a trained copy starts from the fp32 upcast
        return {}
    return {m.weight: m.weight.dtype for m in modules.values() if m is not None}


def keep_dtypes(base: PreTrainedModel, frozen: dict[torch.nn.Parameter, torch.dtype]) -> None:
    """Undo PEFT's fp32 upcast of the frozen embeddings and LM head: in the loaded (compute) dtype
    they take half the memory (3.9 GiB against 2.0 at 34B) and give the same bf16 autocast
    matmuls; the loss is still computed on fp32 logits (transformers upcasts them). The LM head
    casts its input (the fp32 final norm's output) to its own dtype outside autocast."""
    for param, dtype in frozen.items():
        param.data = param.data.to(dtype)
    head = base.get_output_embeddings()
    if head is not None and head.weight in frozen and frozen[head.weight] != torch.float32:
        head.register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype), *args[1:]))


def use_kernels(model: M, quant: Quantization) -> M:
    """Route 4-bit layers (LoRA-wrapped or bare) through qlcode's kernels when quant.kernels asks
    (auto: on CUDA, once they check out there): Triton dequantization + matmul for training and
    prefill, bitsandbytes' own matmul_4bit for decoding's few rows; with quant.fused_blocks, Llama's and
    Qwen2's MLP and attention projections as fused blocks (qlcode.kernels.fused_blocks)."""
    from qlcode.kernels.selfcheck import auto_kernels

    if quant.bits != 4 or (auto_kernels(model) if quant.kernels == "auto" else quant.kernels) != "triton":
        return model
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ModelError("quant.kernels: triton needs a CUDA GPU (TRITON_INTERPRET=1 runs it slowly on CPU, for tests); "
                         "use quant.kernels: bitsandbytes here")
    from qlcode.kernels.qlora_linear import TRITON, patch_model

    patch_model(model, TRITON)
    if quant.fused_blocks:
        from qlcode.kernels.fused_blocks import patch_blocks

        patch_blocks(model, TRITON)
    return model
