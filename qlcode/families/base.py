"""What qlcode needs to know about a code model family, as data: one `Family` per module.

A family is resolved from a base model's config (its `model_type`) and tokenizer (tokens only that
family has), never from its name. Everything family-specific in qlcode reads it from here: the
Instruct chat template and the tokens that carry loss in it, the infilling tokens and layouts,
bos/eos/pad, how an Instruct model is recognised, the GGUF architecture and tensor names, the
configs `qlcode plan` ships, and the licence and tags of a model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Infilling:
    """The family's fill-in-the-middle tokens and the layouts it was trained with.

    PSM: [bos] prefix-token PREFIX suffix-token SUFFIX middle-token, then the middle and `end`.
    SPM: [bos] prefix-token suffix-token SUFFIX middle-token PREFIX, then the middle and `end`
    (the SPM variant Code Llama and StarCoder use: the prefix runs straight into the middle).
    """

    prefix: str
    suffix: str
    middle: str
    end: str  # the token the model writes after the middle
    layouts: tuple[str, ...] = ("psm",)  # "psm", "spm"
    bos: bool = False  # the prompt starts with the tokenizer's bos
    sentencepiece: bool = False  # Code Llama: the prefix keeps SentencePiece's "▁", suffix and middle do not
    repo_name: str | None = None  # repository-level tokens, where the family has them
    file_sep: str | None = None
    repo_layout: tuple[str, str] = ("{name}\n", "{path}\n{text}\n")  # after repo_name, after each file_sep

    def repository(self, name: str, files: list[tuple[str, str]]) -> str:
        """A repository (its name, then (path in it, text) per file) as one training text, laid out as the
        family was trained: with its repository-level tokens where it has them, else each file under a
        `# file: NAME/PATH` comment (Code Llama's long-context data; DeepSeek-Coder has no such tokens either)."""
        if self.repo_name is None or self.file_sep is None:
            return "".join(f"# file: {name}/{path}\n{text}\n" for path, text in files)
        head, each = self.repo_layout
        return self.repo_name + head.format(name=name) + "".join(
            self.file_sep + each.format(path=path, text=text) for path, text in files)

    @property
    def repo_tokens(self) -> tuple[str, ...]:
        """The repository-level tokens (none for Code Llama, DeepSeek-Coder): infilling never cuts one in two."""
        return tuple(t for t in (self.repo_name, self.file_sep) if t)


@dataclass(frozen=True)
class Gguf:
    """How llama.cpp names the family: architecture, tokenizer pre-tokenizer and tensor names."""

    architecture: str  # general.architecture
    pre: str  # tokenizer.ggml.pre for a byte-level BPE vocabulary
    layer_names: dict[str, str]  # module path inside a decoder layer -> GGUF name (blk.N.NAME)
    permute_qk: bool  # Llama's converter permutes q/k rows back to Meta's interleaved RoPE
    layer_norm: bool = False  # LayerNorm (epsilon key layer_norm_epsilon) rather than RMSNorm
    eot: str | None = None  # tokenizer.ggml.eot_token_id: the token that ends a turn or an infilling

    top_names: dict[str, str] = field(default_factory=lambda: {
        "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"})

    def tensor_name(self, hf_name: str) -> str | None:
        """The GGUF name of a Hugging Face tensor, or None for one this architecture does not have."""
        stem, kind = hf_name.rsplit(".", 1)
        if stem in self.top_names:
            return f"{self.top_names[stem]}.{kind}"
        parts = stem.split(".")
        if parts[:2] != ["model", "layers"] or kind not in ("weight", "bias"):
            return None
        name = self.layer_names.get(".".join(parts[3:]))
        return None if name is None else f"blk.{parts[2]}.{name}.{kind}"


LLAMA_LAYERS = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


@dataclass(frozen=True)
class Family:
    name: str  # the registry key (qlcode.families.FAMILIES)
    title: str  # for people: "Qwen2.5-Coder"
    model_types: tuple[str, ...]  # config.json model_type values of the architecture
    markers: tuple[str, ...]  # tokens only this family's vocabulary has (all must be present)
    chat_template: str  # the Instruct format, answers (and their end token) inside {% generation %}
    pad: str  # the token training and generation pad with (never one the model must predict)
    infilling: Infilling
    gguf: Gguf
    licence: str  # the Hugging Face card licence id the weights carry
    tags: tuple[str, ...]  # model card tags
    shipped: dict[str, str]  # lower-cased Hub id -> config file in qlcode/builtin/configs (planning offline)
    # the Instruct format in Ollama's Go template syntax (a Modelfile's TEMPLATE) and its stop strings:
    # .System holds the system messages, .Messages the turns; llama.cpp adds bos itself where `bos`
    ollama_template: str
    ollama_stops: tuple[str, ...]
    turn_end: str | None = None  # the Instruct tokenizers' eos when it is not the base's (<|im_end|>, <|EOT|>)
    bos: bool = False  # the tokenizer puts bos in front of every text

    def is_instruct(self, tokenizer) -> bool:
        """Whether a model's own tokenizer is its Instruct variant's: the Instruct eos where the family has
        one (Qwen2.5-Coder, DeepSeek-Coder), else a chat template that is not qlcode's training copy (the
        Hub's bases ship none; the micro model, a base, carries qlcode's)."""
        if self.turn_end is not None:
            return tokenizer.eos_token == self.turn_end
        template = tokenizer.chat_template
        return bool(template) and template != self.chat_template

    def special_tokens(self) -> list[str]:
        """Every token text this family's templates and infilling use."""
        i = self.infilling
        found = [i.prefix, i.suffix, i.middle, i.end, self.pad, *i.repo_tokens, *([self.turn_end] if self.turn_end else [])]
        return list(dict.fromkeys(found))
