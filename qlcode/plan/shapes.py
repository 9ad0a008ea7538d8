"""A base model's shapes, read from its config: a local directory, builtin:NAME, the Hub, or (for
Code Llama's Hub ids) the config files qlcode ships, so that planning works offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import ModelError

SHIPPED = Path(__file__).resolve().parent.parent / "builtin" / "configs"
# codellama/CodeLlama-7b-Python-hf and its kin: the size picks the shipped config.json.
CODELLAMA_ID = re.compile(r"^(?:codellama|meta-llama)/CodeLlama-(7b|13b|34b|70b)(-Python|-Instruct)?-hf$", re.IGNORECASE)
# The Python models of 7B and 13B were not trained for infilling: their vocabulary lacks the 16
# infilling tokens (config.json vocab_size 32000; the base and Instruct models have 32016).
PYTHON_VOCAB = {"7b": 32000, "13b": 32000}


@dataclass(frozen=True)
class Shapes:
    """What memory depends on in a Llama-architecture decoder."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False

    def linears(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each linear layer of one decoder layer, by PEFT's module name."""
        h, f = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}

    @classmethod
    def from_config(cls, config) -> Shapes:
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


def shipped_config(base: str):
    """The shipped config of a Code Llama Hub id, or None for any other base."""
    from transformers import LlamaConfig

    match = CODELLAMA_ID.match(base)
    if match is None:
        return None
    size, variant = match.group(1).lower(), (match.group(2) or "").lower()
    config = LlamaConfig.from_json_file(str(SHIPPED / f"CodeLlama-{size}-hf.json"))
    if variant == "-python" and size in PYTHON_VOCAB:
        config.vocab_size = PYTHON_VOCAB[size]
    return config


def load_shapes(base: str, revision: str | None = None) -> Shapes:
    """Shapes of `base` (a recipe's model.base): local or builtin directories first, then the
    shipped Code Llama configs (identical to the Hub's), then the Hub."""
    from transformers import AutoConfig

    from qlcode.models import base_path

    path = base_path(base)
    config = None if Path(path).expanduser().is_dir() else shipped_config(base)
    if config is None:
        try:
            config = AutoConfig.from_pretrained(path, revision=revision)
        except (OSError, ValueError) as e:
            raise ModelError(f"model.base: cannot read the config of {base!r} to plan its memory: {e}") from None
    if not hasattr(config, "intermediate_size"):
        raise ModelError(f"model.base: {base!r} is a {config.model_type} model; qlcode plan knows Llama-architecture decoders")
    return Shapes.from_config(config)
