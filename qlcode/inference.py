"""A model to generate with, loaded exactly as it was trained, and the sampling arguments.

Used by `qlcode eval`, `pairs`, `infill`, the playground and the benchmarks, so that all of them
agree: an adapter run loads on its base with the run's own quantization (bits, 4-bit type, double
quantization), dtype, RoPE overrides and tokenizer (which carries the template it was trained
with); a base or a merged model alone loads with the quantization asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qlcode.errors import ModelError
from qlcode.families import family_of_tokenizer, model_type_of
from qlcode.models import Quantization, base_path, load_base, load_recipe_base, load_tokenizer, quantization_of, use_kernels
from qlcode.runs import RunDir


@dataclass
class LoadedModel:
    model: PreTrainedModel | PeftModel
    tokenizer: PreTrainedTokenizerBase
    base: str
    quant: Quantization
    instruct: bool  # prompt with the family's Instruct chat format


def is_instruct(base: str, tokenizer: PreTrainedTokenizerBase, template: str | None = None) -> bool:
    """Instruct prompting for an adapter trained in the instruct template, or a base its family
    recognises as Instruct from its own tokenizer (qlcode.families.base.Family.is_instruct)."""
    if template is not None:
        return template == "instruct"
    return family_of_tokenizer(tokenizer, model_type_of(base_path(base))).is_instruct(tokenizer)


def stop_at_answer_end(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Generation stops at the tokenizer's eos too (an Instruct format's, e.g. Qwen's <|im_end|>),
    besides the base's own (<|endoftext|>)."""
    config = model.generation_config
    ends = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    if tokenizer.eos_token_id not in ends:
        config.eos_token_id = [e for e in ends if e is not None] + [tokenizer.eos_token_id]


def load_model(base: str | None = None, adapter: str | Path | None = None, quant: Quantization = Quantization()) -> LoadedModel:
    """A base, or an adapter run on its base, in eval mode and ready to generate.

    With an adapter, everything about the base comes from the run's recipe.yaml (`base` may name
    another copy of the same weights, e.g. a local directory); `quant` applies to a base given alone.
    """
    if adapter is None:
        if base is None:
            raise ModelError("give a base model (--model) or an adapter (--adapter)")
        model = load_base(base, quant)
        tok = load_tokenizer(base)
        return LoadedModel(use_kernels(model, quant).eval(), tok, base, quant, is_instruct(base, tok))
    run = RunDir(adapter)
    run.require_adapter()
    recipe = run.recipe()
    if base is not None and base != recipe.model.base:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"base": base})})
    trained = quantization_of(recipe)
    model = PeftModel.from_pretrained(load_recipe_base(recipe), str(run.path))
    tok = load_tokenizer(str(run.path))  # the adapter's own: it carries the chat template it was trained with
    stop_at_answer_end(model, tok)
    return LoadedModel(use_kernels(model, trained).eval(), tok, recipe.model.base, trained,
                       is_instruct(recipe.model.base, tok, recipe.data.template))


def sampling_args(temperature: float, top_p: float = 0.95) -> dict:
    """`generate` arguments: nucleus sampling at a temperature, or greedy at 0."""
    return {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
