"""Loading bases, tokenizers and adapters: quantization, LoRA, and the device and dtype policy.

Policy: CUDA when present, else CPU, through the same code. On CUDA the 4-bit path computes in
bf16 (fp16 where the GPU lacks bf16); on CPU it computes in fp32 with bitsandbytes' CPU kernels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from qlcode import builtin
from qlcode.data.templates import CODELLAMA_INSTRUCT_CHAT_TEMPLATE
from qlcode.errors import ModelError
from qlcode.recipe import ModelSection, QuantSection, Recipe

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CPU = torch.device("cpu")
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # unquantized weights
    compute_dtype: torch.dtype  # 4-bit matmuls

    @property
    def device_map(self) -> dict[str, int | str]:
        return {"": self.device.index or 0} if self.device.type == "cuda" else {"": "cpu"}


def placement(model: ModelSection, quant: QuantSection) -> Placement:
    """auto dtypes: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        device, auto = CPU, torch.float32
    dtype = auto if model.dtype == "auto" else DTYPES[model.dtype]
    compute = dtype if quant.compute_dtype == "auto" else DTYPES[quant.compute_dtype]
    return Placement(device, dtype, compute)


def base_path(spec: str) -> str:
    """builtin:NAME -> the packaged directory; a local directory or a Hub id is passed through."""
    return str(builtin.model_path(spec)) if spec.startswith("builtin:") else spec


def load_tokenizer(model: ModelSection, template: str = "raw") -> AutoTokenizer:
    """The base's tokenizer with Code Llama's quirks settled.

    Code Llama's tokenizers have no pad token. Padding with eos would be harmless for the loss
    (TRL masks padding by position) but makes `generate` and batching ambiguous about where a
    sequence ends, so we pad with <unk>, which the model never needs to predict. Training pads on
    the right; the eos that ends every answer is appended by TRL (prompt/completion rows) or by the
    chat template (conversations). transformers 5 gives SentencePiece tokenizers (Llama's) their
    leading "▁" on a text's first segment only, so "<s>[INST]" lost the "▁[" Code Llama Instruct was
    trained on; every segment gets it again, as in transformers 4 and Meta's reference.
    """
    try:
        tok = AutoTokenizer.from_pretrained(base_path(model.base), revision=model.revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.base: cannot load a tokenizer from {model.base!r}: {e}") from None
    if tok.pad_token is None:
        if tok.unk_token is not None and tok.unk_token != tok.eos_token:
            tok.pad_token = tok.unk_token
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    spm = getattr(getattr(tok, "backend_tokenizer", None), "pre_tokenizer", None)
    if isinstance(spm, pre_tokenizers.Metaspace) and spm.prepend_scheme == "first":
        spm.prepend_scheme = "always"  # "<s>[INST]" -> 1, 518 ("▁["): Meta encodes each turn as a text of its own
    if template == "codellama-instruct":
        tok.chat_template = CODELLAMA_INSTRUCT_CHAT_TEMPLATE
    return tok


def quantization_config(quant: QuantSection, place: Placement) -> BitsAndBytesConfig | None:
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


def load_base(model: ModelSection, quant: QuantSection) -> PreTrainedModel:
    """The base model as the recipe asks: quantized or not, with its RoPE overrides applied."""
    place = placement(model, quant)
    path = base_path(model.base)
    try:
        config = AutoConfig.from_pretrained(path, revision=model.revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.base: cannot load {model.base!r}: {e}") from None
    if model.rope_theta is not None or model.rope_scaling is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        if model.rope_theta is not None:
            rope["rope_theta"] = model.rope_theta
        if model.rope_scaling is not None:
            rope.update(rope_type=model.rope_scaling.type, factor=model.rope_scaling.factor)
        config.rope_parameters = rope
    if model.max_position_embeddings is not None:
        config.max_position_embeddings = model.max_position_embeddings
    qconfig = quantization_config(quant, place)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(torch_dtype|fast path|kernels).*")
        base = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            revision=model.revision,
            dtype=place.dtype,
            quantization_config=qconfig,
            device_map=place.device_map,
            attn_implementation=model.attn_implementation,
        )
    disable_cpu_repacking(base)
    return base


def with_lora(base: PreTrainedModel, recipe: Recipe) -> PeftModel:
    """Make the base trainable through LoRA: a new adapter, or `lora.adapter` to continue one."""
    lora, gc = recipe.lora, recipe.train.gradient_checkpointing
    if recipe.quant.bits is not None:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.adapter:
        if not (Path(lora.adapter) / "adapter_config.json").is_file():
            raise ModelError(f"lora.adapter: {lora.adapter!r} holds no adapter_config.json; train that adapter first")
        return use_kernels(PeftModel.from_pretrained(base, lora.adapter, is_trainable=True), recipe.quant)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        use_dora=lora.dora,
        modules_to_save=lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(recipe.train.seed)
    return use_kernels(get_peft_model(base, config), recipe.quant)


def use_kernels(model: M, quant: QuantSection) -> M:
    """Route 4-bit layers (LoRA-wrapped or bare) through qlcode's Triton kernels when quant.kernels
    asks (auto: on CUDA, once they check out there): training, and decoding through the fused dequant-matmul."""
    import os

    from qlcode.kernels.selfcheck import auto_kernels

    if quant.bits != 4 or (auto_kernels(model) if quant.kernels == "auto" else quant.kernels) != "triton":
        return model
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ModelError("quant.kernels: triton needs a CUDA GPU (TRITON_INTERPRET=1 runs it slowly on CPU, for tests); "
                         "use quant.kernels: bitsandbytes here")
    from qlcode.kernels.qlora_linear import TRITON, patch_model

    patch_model(model, TRITON)
    return model



def load_for_inference(base: str | None, adapter: str | None, bits: int | None = 4) -> tuple[PreTrainedModel, AutoTokenizer]:
    """A base (and optionally an adapter run directory on it) ready to generate.

    With an adapter and no base, the base is the one named in the adapter's recipe.yaml; the
    tokenizer is the adapter's own (it carries the chat template it was trained with).
    """
    from qlcode.recipe import read_run_recipe

    model_section = ModelSection(base=base) if base else None
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError(f"--adapter: {adapter!r} holds no adapter_config.json (a finished run directory has one)")
        trained = read_run_recipe(Path(adapter) / "recipe.yaml")
        model_section = model_section or trained.model
    if model_section is None:
        raise ModelError("give a base model (--model) or an adapter (--adapter)")
    quant = QuantSection(bits=bits)
    model = load_base(model_section, quant)
    tok = load_tokenizer(ModelSection(base=adapter) if adapter else model_section)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    return use_kernels(model, quant).eval(), tok
