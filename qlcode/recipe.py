"""Recipes: the YAML schema, loading, command-line overrides, and messages that point at the fix.

A recipe is the whole description of a run. Every key has a default here (and in the README's
reference, which a test keeps in step with this file), so `qlcode recipes show` prints a complete,
reproducible recipe. Errors name the file, the line, the dotted key path and the closest valid key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from qlcode import builtin
from qlcode.distributed.section import DistributedSection, distributed_problems
from qlcode.errors import RecipeError
from qlcode.families import template_name
from qlcode.methods import METHODS, format_problem
from qlcode.schema import LOCAL_DATA_SUFFIXES, DType, Section
from qlcode.tracking import tracker_problem

# the names of qlcode.data.formats.FORMATS (a test keeps them in step)
Format = Literal["alpaca", "prompt-completion", "messages", "sharegpt", "openai", "text", "preference", "repository", "kto", "problems"]
MIN_LENGTH = 16  # tokens: <s>[INST] x [/INST] y </s> is 12 with Llama's tokenizer, 14 with the micro model's
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
MAX_NAME_BYTES = 200  # a run name is a directory name: filesystems allow 255 bytes, checkpoints and temporaries need a margin


class RopeScaling(Section):
    type: Literal["linear", "dynamic", "yarn", "llama3"] = Field(description="RoPE scaling method.")
    factor: float = Field(gt=1.0, description="Context extension factor.")


class ModelSection(Section):
    base: str = Field(
        description="Base model: a Hub id (codellama/CodeLlama-7b-Python-hf), a local directory, "
        "or builtin:micro-codellama."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base.")
    dtype: DType = Field(
        "auto",
        description="dtype of the unquantized weights; auto = bf16 on GPUs that support it, "
        "fp16 on other GPUs, fp32 on CPU.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    rope_theta: float | None = Field(
        None, gt=0, description="Override the RoPE base (Code Llama's long-context fine-tuning uses 1e6)."
    )
    rope_scaling: RopeScaling | None = Field(None, description="RoPE scaling: {type, factor}.")
    max_position_embeddings: int | None = Field(None, gt=0, description="Override the model's max positions.")


class QuantSection(Section):
    bits: Literal[4, 8, None] = Field(4, description="4 (QLoRA), 8, or none (plain LoRA over a full base).")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the 4-bit block scales too (saves ~0.4 bit/param).")
    compute_dtype: DType = Field("auto", description="dtype of the 4-bit matmuls; auto = model.dtype's choice.")
    storage_dtype: Literal["uint8", "bf16", "fp16", "fp32"] = Field(
        "uint8", description="Container dtype of packed 4-bit weights (bf16 for FSDP)."
    )
    kernels: Literal["auto", "triton", "bitsandbytes"] = Field(
        "auto", description="4-bit layers: qlcode's (Triton dequantization for training and prefill, bitsandbytes' matmul "
                            "for decoding's few rows) or bitsandbytes' own; auto = triton on CUDA."
    )
    fused_blocks: bool = Field(
        True, description="With qlcode's kernels (quant.kernels: triton, or auto on CUDA): Llama's and Qwen2's MLP and "
                          "attention projections as fused QLoRA blocks that save less for backward; StarCoder2 keeps the plain path."
    )

    @field_validator("bits", mode="before")
    @classmethod
    def _none_word(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() == "none" else v


class LoraSection(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="Modules to adapt: all-linear or a list such as [q_proj, v_proj]."
    )
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter (e.g. [lm_head])."
    )
    adapter: str | None = Field(
        None, description="Continue training this existing adapter directory (e.g. DPO after SFT) instead of a new one."
    )
    init: Literal["default", "pissa", "olora", "loftq"] = Field(
        "default", description="How a new adapter starts: default (A random, B zero), pissa or olora (the base's principal "
        "directions; full-precision bases, saved converted to a plain LoRA), loftq (fitted to a 4-bit base's quantization error)."
    )

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, v: str | list[str]) -> str | list[str]:
        if v == []:
            raise ValueError("an empty list adapts nothing: name modules such as [q_proj, v_proj], or use all-linear")
        return v


class DatasetSpec(Section):
    source: str = Field(
        description="A Hub dataset id, a local .jsonl/.json/.parquet/.csv file, builtin:stdlib-python-instruct, "
        "or builtin:mbpp-train (MBPP task_id 601-974 as problems; builtin:mbpp-train:PATH reads a local mbpp.jsonl)."
    )
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split to train on.")
    format: Format = Field(
        description="Row format: alpaca, prompt-completion, messages, sharegpt, openai, text, preference, kto, problems, or repository "
        "(a directory of projects, or builtin:stdlib-packages, one sequence stream per project); see README: Formats."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the format's fields to this dataset's columns, e.g. {instruction: question}.",
    )
    max_rows: int | None = Field(None, gt=0, description="Use at most this many rows (after shuffling with data.seed).")
    made_by: str | None = Field(
        None, description="The command that makes this local file (e.g. qlcode pairs ...): until the file exists, "
        "recipes validate notes it and train names the command."
    )


class FimSection(Section):
    rate: float = Field(0.5, ge=0.0, le=1.0, description="Share of training rows turned into infilling examples of their code.")
    spm_rate: float = Field(0.5, ge=0.0, le=1.0, description="Share of those in suffix-prefix-middle order (the rest prefix-suffix-middle).")
    unit: Literal["line", "char"] = Field("line", description="Split points fall between lines or between characters.")


class DataSection(Section):
    datasets: list[DatasetSpec] = Field(min_length=1, description="One or more datasets, concatenated.")
    template: Literal["instruct", "completion", "raw"] = Field(
        "instruct",
        description="instruct = the base family's Instruct format (Code Llama: <s>[INST] ... [/INST] answer</s>; "
        "codellama-instruct, the older name, still loads); completion = the prompt as code followed by its "
        "completion; raw = rows used as they are.",
    )
    max_length: int = Field(2048, description="Tokens per training sequence (at least 16); longer rows are truncated.")
    packing: bool = Field(False, description="Pack several rows into each sequence (best-fit decreasing).")
    train_on_completions_only: bool = Field(
        True, description="Loss on the response tokens and eos only, not on the prompt."
    )
    validation: float | str = Field(
        0.05,
        description="Held-out data: a fraction of the training rows (0 = none), or the name of a split of each dataset.",
    )
    fim: FimSection | None = Field(
        None, description="Infilling-aware fine-tuning: {rate, spm_rate, unit}; unset = off."
    )
    decontaminate: list[str] = Field(
        default_factory=list,
        description="Drop training rows sharing a 13-gram with these benchmarks: humaneval, mbpp, or mbpp:PATH.",
    )
    seed: int = Field(42, description="Seed for shuffling, max_rows, the validation split and infilling.")

    @field_validator("template", mode="before")
    @classmethod
    def _older_template_names(cls, v):
        return template_name(v) if isinstance(v, str) else v

    @field_validator("decontaminate")
    @classmethod
    def _known_benchmarks(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in ("humaneval", "mbpp") and not name.startswith("mbpp:"):
                raise ValueError(f"unknown benchmark {name!r}: use humaneval, mbpp or mbpp:PATH")
        return v

    @field_validator("max_length")
    @classmethod
    def _room_for_an_example(cls, v: int) -> int:
        if v < MIN_LENGTH:
            raise ValueError(f"must be at least {MIN_LENGTH} tokens, got {v}: one Code Llama Instruct exchange with a "
                             "one-token prompt and a one-token answer already takes 12 (Llama's tokenizer) to 14 (the micro model's)")
        return v

    @field_validator("validation")
    @classmethod
    def _fraction_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            raise ValueError(f"a validation fraction must be in [0, 1), got {v}")
        return v


class PassAt1Section(Section):
    bench: Literal["humaneval", "mbpp"] = Field("humaneval", description="Benchmark to run during training.")
    problems: int = Field(20, gt=0, description="The first N problems of it (greedy, one sample each).")
    every: int = Field(50, gt=0, description="Run every N optimizer steps, and after the last step.")
    data: str | None = Field(None, description="MBPP as a local jsonl (default: the Hub).")
    max_new_tokens: int = Field(256, gt=0, description="Longest completion.")


class TrainOptions(Section):
    """The keys every method shares; each method's own keys live under train.<method> (see qlcode/methods)."""

    method: str = Field("sft", description="Training method: " + ", ".join(f"{n} ({m.summary})" for n, m in METHODS.items()) + ".")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(1, gt=0, description="Sequences per forward pass.")
    gradient_accumulation_steps: int = Field(8, gt=0, description="Micro batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup: float = Field(0.03, ge=0, description="Warmup: a fraction of the steps if < 1, else a number of steps.")
    optimizer: Literal["paged_adamw_8bit", "adamw_8bit", "adamw_torch"] = Field(
        "paged_adamw_8bit", description="Optimizer; the 8-bit ones keep Adam state in 8 bits (bitsandbytes)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory.")
    liger: bool = Field(
        False, description="liger-kernel's RMSNorm, RoPE, SwiGLU and fused linear cross-entropy (Llama; CUDA; "
                           "pip install 'qlcode[liger]').")
    offload_activations: bool = Field(
        False, description="Keep the tensors saved for backward (with checkpointing: each layer's input) in pinned CPU "
                           "memory until backward needs them; less GPU memory, more host traffic.")
    compile: bool = Field(
        False, description="torch.compile the model (inductor, through TrainingArguments.torch_compile): the first step "
                           "compiles, the second sequence length seen recompiles once; the run summary reports the time it "
                           "took. Not with offload_activations.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (always before and after training).")
    pass_at_1: PassAt1Section | None = Field(
        None, description="Execution-grounded eval in the loop: {bench, problems, every}; the best adapter by it is kept in best/."
    )
    save_steps: int = Field(100, gt=0, description="Write a checkpoint every N steps.")
    logging_steps: int = Field(10, gt=0, description="Log loss, learning rate and tokens/s every N steps.")
    keep_checkpoints: int = Field(3, gt=0, description="Keep only the last K checkpoints.")
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none", description="Experiment tracker; mlflow logs to ./mlruns unless MLFLOW_TRACKING_URI is set (README: Trackers).")
    seed: int = Field(42, description="Seed for model init, dropout and data order.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; the methods are: {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _method_section(self) -> TrainOptions:
        """The chosen method's section gets its defaults; another method's section is a mistake."""
        for name, method in METHODS.items():
            given = getattr(self, name)
            if name == self.method and given is None:
                setattr(self, name, method.section())
            elif name != self.method and given is not None:
                raise ValueError(f"train.{name} is set, but train.method is {self.method}: "
                                 f"remove train.{name} or set train.method: {name}")
        return self


TrainSection = create_model(
    "TrainSection", __base__=TrainOptions,
    **{name: (m.section | None, Field(None, description=f"{m.summary}: its keys (used when train.method is {name}).")) for name, m in METHODS.items()},
)


class OutputSection(Section):
    name: str | None = Field(None, description="Run name; unset = the recipe file's name.")
    dir: str | None = Field(None, description="Run directory; unset = adapters/<name>.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"[\w.-]+", v) or v in (".", "..")):
            raise ValueError(f"a run name may hold letters, digits, '.', '_' and '-' only, and is not . or .. (got {v!r})")
        if v is not None and len(v.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"a run name is a directory name: at most {MAX_NAME_BYTES} bytes, got {len(v.encode())}")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.dir) if self.dir else Path("adapters") / self.name


class HubSection(Section):
    repo_id: str | None = Field(None, description="Hub repository user/name for the adapter.")
    private: bool = Field(True, description="Create the Hub repository as private.")
    push: bool = Field(False, description="Push the adapter to repo_id when training ends.")

    @field_validator("repo_id")
    @classmethod
    def _repo_form(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", v):
            raise ValueError(f"a Hub repo id has the form user/name, got {v!r}")
        return v


class Recipe(Section):
    model: ModelSection
    quant: QuantSection = Field(default_factory=QuantSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)
    hub: HubSection = Field(default_factory=HubSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "quant": QuantSection,
    "lora": LoraSection,
    "data": DataSection,
    "data.datasets[]": DatasetSpec,
    "data.fim": FimSection,
    "model.rope_scaling": RopeScaling,
    "train": TrainSection,
    "train.pass_at_1": PassAt1Section,
    **{f"train.{name}": m.section for name, m in METHODS.items()},
    "output": OutputSection,
    "hub": HubSection,
    "distributed": DistributedSection,
}


# ---------------------------------------------------------------------------------------------
# Loading


MAX_VALUES = 100_000  # values a recipe may hold once YAML aliases are expanded; a real recipe has hundreds


def expanded_size(node: yaml.Node, sizes: dict[int, int] | None = None, open_: frozenset = frozenset()) -> int:
    """How many values the document holds with every alias expanded (a node reached twice counts twice),
    computed once per node; a node that holds itself (an alias to its own anchor) is endless."""
    sizes = {} if sizes is None else sizes
    if id(node) in open_:
        return MAX_VALUES + 1
    if id(node) not in sizes:
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        inner = open_ | {id(node)}
        sizes[id(node)] = min(MAX_VALUES + 1, 1 + sum(expanded_size(c, sizes, inner) for c in children))
    return sizes[id(node)]


class _Located:
    """Where each key of a YAML document sits, so errors can name a line.

    Each node is walked once: a node reached again through an alias keeps the lines of its anchor,
    so an alias bomb (aliases nested in aliases) costs its size in the file, not its expansion.
    """

    def __init__(self, source: str, node: yaml.Node | None):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.seen: set[int] = set()
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if path + (key.value,) in self.lines:
                    first = self.lines[path + (key.value,)]
                    raise RecipeError(f"{self.source}:{key.start_mark.line + 1}: {dotted(path + (key.value,))}: "
                                      f"duplicate key (first at line {first}); YAML would silently keep only the last")
                self.lines[path + (key.value,)] = key.start_mark.line + 1
                self._walk_child(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def _walk_child(self, node: yaml.Node, path: tuple) -> None:
        key_line = self.lines[path]
        self._walk(node, path)
        self.lines[path] = key_line

    def line(self, path: tuple) -> int | None:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_at(path: tuple) -> type[Section]:
    key = dotted(tuple("[]" if isinstance(p, int) else p for p in path)).replace(".[]", "[]")
    key = re.sub(r"\[\]\[\]", "[]", key)
    return SECTIONS.get(key, Recipe) if path else Recipe


# Names users bring from axolotl, PEFT, TRL and transformers, mapped to ours.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "lora_target_modules": "target_modules", "use_dora": "dora", "use_rslora": "rslora",
    "num_epochs": "epochs", "num_train_epochs": "epochs", "lr": "learning_rate", "optim": "optimizer",
    "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
    "scheduler": "lr_scheduler", "lr_scheduler_type": "lr_scheduler", "warmup_ratio": "warmup",
    "warmup_steps": "warmup", "save_total_limit": "keep_checkpoints", "beta": "dpo_beta",
    "loss_type": "dpo_loss", "neftune": "neftune_noise_alpha", "sequence_len": "max_length",
    "seq_len": "max_length", "max_seq_length": "max_length", "sample_packing": "packing",
    "base_model": "base", "model_name": "base", "torch_dtype": "dtype", "path": "source",
    "load_in_4bit": "bits", "bnb_4bit_quant_type": "type", "use_double_quant": "double_quant",
}


# Keys that moved: (old path) -> new dotted key.
RENAMED = {("train", "dpo_beta"): "train.dpo.beta", ("train", "dpo_loss"): "train.dpo.loss",
           ("train", "neftune_noise_alpha"): "train.sft.neftune_noise_alpha"}


def _unknown_key_hint(path: tuple) -> str:
    if path in RENAMED:
        return f"renamed: use {RENAMED[path]}"
    valid = list(_section_at(path[:-1]).model_fields)
    alias = ALIASES.get(str(path[-1]))
    close = [alias] if alias in valid else difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.5)
    prefix = dotted(path[:-1])
    if close:
        return f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return "valid keys: " + ", ".join(valid)


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds union member tags such as "list[str]" or "literal['all-linear']" to locations.
    # A user's key may hold brackets too ("[/b]"): only a lowercase name followed by [...] is a tag.
    return tuple(p for p in loc if isinstance(p, int) or not re.fullmatch(r"[a-z][\w-]*\[.*\]", p))


def _messages(err: ValidationError, where) -> list[str]:
    out, seen = [], set()
    for e in err.errors():
        path = _clean_loc(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            text = f"unknown key ({_unknown_key_hint(path)})"
        elif e["type"] == "missing":
            text = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            text = msg if e["type"] == "value_error" else f"{msg[0].lower()}{msg[1:]} (got {e['input']!r})"
        line = f"{where(path)}: {dotted(path)}: {text}"
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def parse_override(item: str) -> tuple[tuple, Any]:
    """`train.max_steps=20` -> (("train", "max_steps"), 20); the value is read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"command line: {item!r}: an override has the form key.path=value (e.g. train.max_steps=20)")
    path = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def _set(tree: dict, path: tuple, value: Any) -> None:
    node: Any = tree
    for part, nxt in zip(path, path[1:]):
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise RecipeError(f"command line: {dotted(path)}: no list item {part} here")
            node = node[part]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    if isinstance(node, list) and not (isinstance(path[-1], int) and path[-1] < len(node)):
        raise RecipeError(f"command line: {dotted(path)}: no list item {path[-1]} here")
    node[path[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem becomes one RecipeError naming its place."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file (qlcode ships recipes/quickstart.yaml to start from)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the recipe as UTF-8") from None
    try:
        node = yaml.compose(text)
        if node is not None and expanded_size(node) > MAX_VALUES:
            raise RecipeError(f"{path}: its YAML aliases (*name) expand to more than {MAX_VALUES:,} values, or to "
                              "themselves; write the recipe out without nesting aliases")
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}:1: a recipe is a mapping of sections ({', '.join(Recipe.model_fields)})")
    located = _Located(str(path), node)
    overridden: dict[tuple, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set(tree, key, value)
        overridden[key] = item
    if isinstance(tree.setdefault("output", {}), dict) and tree["output"].get("name") is None:
        tree["output"]["name"] = path.stem
        overridden[("output", "name")] = f"output.name unset: the file's name, {path.stem!r}"

    def where(p: tuple) -> str:
        for k, item in overridden.items():
            if p[: len(k)] == k or k[: len(p)] == p:
                return f"{path} ({item})" if item.startswith("output.name unset") else f"command line ({item})"
        line = located.line(p)
        return f"{path}:{line}" if line else str(path)

    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError("\n".join(_messages(err, where))) from None
    _check_consistency(recipe, where)
    return recipe


def read_run_recipe(path: Path) -> Recipe:
    """The recipe.yaml a run wrote: schema-checked only, since its data files may have moved since."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
        return Recipe.model_validate(_migrated(tree) if isinstance(tree, dict) else tree)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError) as e:
        raise RecipeError(f"{path}: not a recipe written by qlcode train ({e})") from None


def _migrated(tree: dict) -> dict:
    """A recipe.yaml written by an older qlcode, with its keys where they live now."""
    train = tree.get("train")
    if isinstance(train, dict):
        for (_, old), new in RENAMED.items():
            if old in train:
                value = train.pop(old)
                section, key = new.split(".")[1:]
                if section == train.get("method", "sft"):
                    train.setdefault(section, {})[key] = value
    return tree


def _check_consistency(recipe: Recipe, where) -> None:
    """Rules that span sections or touch the filesystem; each names the key to change."""

    problems = []
    for i, ds in enumerate(recipe.data.datasets):
        key = ("data", "datasets", i, "format")
        if (problem := format_problem(ds.format, recipe.train.method)) is not None:
            problems.append((key, problem))
        src = ("data", "datasets", i, "source")
        if ds.format == "repository":
            if not recipe.data.packing:
                problems.append((key, "repository data is cut into max_length pieces: set data.packing: true"))
            if ds.source != "builtin:stdlib-packages" and not Path(ds.source).is_dir():
                problems.append((src, f"repository data is a directory of projects or builtin:stdlib-packages; {ds.source!r} is not a directory"))
            continue
        if not ds.source.startswith("builtin:") and not ds.source.endswith(LOCAL_DATA_SUFFIXES):
            if Path(ds.source).exists():
                problems.append((src, f"{ds.source!r} is a local {'directory' if Path(ds.source).is_dir() else 'file'}, not a "
                                      "Hub dataset id: qlcode reads local .jsonl, .json, .parquet and .csv files "
                                      "(and a directory of projects as format: repository)"))
            elif not HUB_ID.match(ds.source):
                problems.append((src, f"{ds.source!r} is neither a Hub dataset id, a .jsonl/.json/.parquet/.csv file, nor builtin:NAME"))
    base = recipe.model.base
    if base.startswith("builtin:") and base.removeprefix("builtin:") not in builtin.MODELS:
        problems.append((("model", "base"), f"unknown builtin model {base!r}; builtin models: "
                                            + ", ".join(f"builtin:{n}" for n in builtin.MODELS)))
    if not base.startswith("builtin:") and (base.startswith((".", "/", "~")) or not HUB_ID.match(base)):
        if not Path(base).expanduser().is_dir():
            problems.append((("model", "base"), f"no such model directory {base!r}"))
    problems += METHODS[recipe.train.method].check(recipe)
    if recipe.data.fim is not None and recipe.train.method != "sft":
        problems.append((("data", "fim"), f"infilling examples train with train.method: sft, not {recipe.train.method}"))
    problems += [(("lora", "init"), p) for p in lora_init_problems(recipe.lora.init, recipe.quant.bits, recipe.lora.adapter)]
    if recipe.quant.kernels == "triton" and recipe.quant.bits != 4:
        problems.append((("quant", "kernels"), f"qlcode's Triton kernels run 4-bit weights; with quant.bits {recipe.quant.bits} "
                                               "use quant.kernels: auto or bitsandbytes"))
    if recipe.train.compile and recipe.train.offload_activations:
        problems.append((("train", "compile"), "torch.compile cannot trace train.offload_activations' saved-tensor hooks (the "
                                               "first step fails): set train.compile: false or train.offload_activations: false"))
    if recipe.output.dir is not None and Path(recipe.output.dir).exists() and not Path(recipe.output.dir).is_dir():
        problems.append((("output", "dir"), f"{recipe.output.dir} is a file; name a directory (or unset output.dir for adapters/<name>)"))
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append((("hub", "push"), "pushing needs hub.repo_id (user/name)"))
    if (problem := tracker_problem(recipe.train.report_to)) is not None:
        problems.append((("train", "report_to"), problem))
    problems += distributed_problems(recipe)
    if problems:
        raise RecipeError("\n".join(f"{where(k)}: {dotted(k)}: {msg}" for k, msg in problems))


def lora_init_problems(init: str, bits: int | None, adapter: str | None) -> list[str]:
    if init == "default":
        return []
    if adapter:
        return [f"{init} starts a new adapter, and lora.adapter continues {adapter!r}: remove one of them"]
    if init in ("pissa", "olora") and bits is not None:
        return [f"{init} moves the base's principal part into the adapter, which qlcode converts back to a plain LoRA "
                f"exactly only over a full-precision base: set quant.bits: none (or lora.init: loftq for a 4-bit base)"]
    if init == "loftq" and bits != 4:
        return [f"loftq fits the adapter to a 4-bit base's quantization error: it needs quant.bits: 4, got {bits or 'none'}"]
    return []


def _type_name(annotation: Any) -> str:
    text = re.sub(r"qlcode\.[\w.]+\.(\w+)", r"\1", str(annotation).replace("typing.", ""))
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    return text.replace("NoneType", "None").replace("Literal", "one of ").replace("|", "or")


def reference_markdown() -> str:
    """The table of every recipe key, its type, default and meaning (README.md carries a copy)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for prefix, section in SECTIONS.items():
        for name, field in section.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
                continue
            default = "required" if field.is_required() else field.get_default(call_default_factory=True)
            default = "required" if default == "required" else yaml.safe_dump(
                default.model_dump() if isinstance(default, BaseModel) else default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| `{prefix}.{name}` | {_type_name(field.annotation)} | `{default}` | {field.description or ''} |")
    return "\n".join(lines) + "\n"
