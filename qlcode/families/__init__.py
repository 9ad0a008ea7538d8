"""Code model families: each is one module with a `FAMILY` (qlcode.families.base.Family).

Adding a family is one module and one line in FAMILIES below. A base model's family is resolved
from its config's model_type and its tokenizer's tokens, never from its name.
"""

from __future__ import annotations

from pathlib import Path

from qlcode.errors import ModelError
from qlcode.families import codellama, deepseek_coder, qwen2_coder, starcoder2
from qlcode.families.base import Family

__all__ = ["DEFAULT", "FAMILIES", "TEMPLATES", "Family", "detect", "family_of_tokenizer", "model_type_of", "template_name"]

FAMILIES: dict[str, Family] = {f.name: f for f in (
    codellama.FAMILY,
    qwen2_coder.FAMILY,
    deepseek_coder.FAMILY,
    starcoder2.FAMILY,
)}
DEFAULT = FAMILIES["codellama"]  # a Llama-architecture base without another family's tokens (as before families)
TEMPLATES = ("instruct", "completion", "raw")  # data.template: the family's Instruct format, code, rows as they are
OLD_TEMPLATES = {"codellama-instruct": "instruct"}  # names recipes and run directories were written with


def _has(vocab: dict[str, int], token: str) -> bool:
    return token in vocab or "▁" + token in vocab  # the Hub's Code Llama vocabulary spells them "▁<PRE>"


def detect(tokenizer, model_type: str | None = None) -> Family | None:
    """The family whose tokens this tokenizer has (among those of `model_type`'s architecture, when known), or None."""
    vocab = tokenizer.get_vocab()
    candidates = [f for f in FAMILIES.values() if model_type is None or model_type in f.model_types]
    return next((f for f in candidates if all(_has(vocab, t) for t in f.markers)), None)


def family_of_tokenizer(tokenizer, model_type: str | None = None) -> Family:
    """The tokenizer's family (`detect`). A tokenizer with none of the families' tokens belongs to Code
    Llama on a Llama architecture or with no config (as every base did before families: its infilling
    then asks for Code Llama's tokens by name); any other architecture is refused with the families there are."""
    found = detect(tokenizer, model_type)
    if found is not None:
        return found
    if model_type in (None, *DEFAULT.model_types):
        return DEFAULT
    raise ModelError(f"model.base: a {model_type} model with none of the tokens of the code model families qlcode "
                     f"knows ({', '.join(f.title for f in FAMILIES.values())}); its architecture is not one of theirs")


def model_type_of(path: str | Path) -> str | None:
    """config.json's model_type in a model directory, or None (an adapter directory, a Hub id)."""
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def template_name(name: str) -> str:
    """A data.template value in today's terms: `codellama-instruct` (older recipes and runs) is `instruct`."""
    return OLD_TEMPLATES.get(name, name)
