"""A base model's shapes, read from its config: a local directory, builtin:NAME, the Hub, or (for
the Hub ids of the code model families, qlcode.families) the config files qlcode ships, so that
planning works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import ModelError
from qlcode.kernels import FUSED_MODEL_TYPES

SHIPPED = Path(__file__).resolve().parent.parent / "builtin" / "configs"


@dataclass(frozen=True)
class Shapes:
    """What memory depends on in a decoder: Llama's (gated SiLU MLP: gate_proj, up_proj, down_proj), or
    StarCoder2's (GELU MLP: c_fc, c_proj)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    gated: bool = True
    fusable: bool = True  # Llama's or Qwen2's blocks, which quant.fused_blocks fuses (StarCoder2 keeps the plain path)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each linear layer of one decoder layer, by PEFT's module name."""
        h, f = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}
        if not self.gated:
            return {**attention, "c_fc": (f, h), "c_proj": (h, f)}
        return {**attention, "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}

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
            gated=config.model_type != "starcoder2",
            fusable=config.model_type in FUSED_MODEL_TYPES,
        )


def shipped_config(base: str):
    """The shipped config of a family's Hub id (each family lists its own), or None for any other base."""
    import json

    from transformers import AutoConfig

    from qlcode.families import FAMILIES

    for family in FAMILIES.values():
        found = family.shipped.get(base.lower())
        if found is not None:
            name, overrides = found
            values = {**json.loads((SHIPPED / name).read_text()), **overrides}
            return AutoConfig.for_model(values.pop("model_type"), **values)
    return None


def load_shapes(base: str, revision: str | None = None) -> Shapes:
    """Shapes of `base` (a recipe's model.base): local or builtin directories first, then the
    shipped configs of the families' Hub ids (identical to the Hub's), then the Hub."""
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
        raise ModelError(f"model.base: {base!r} is a {config.model_type} model; qlcode plan knows the Llama, Qwen2 and StarCoder2 decoders of the code model families")
    return Shapes.from_config(config)
