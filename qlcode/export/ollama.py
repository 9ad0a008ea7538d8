"""An Ollama Modelfile beside an exported GGUF, so that `ollama create NAME -f Modelfile` is the only
step left.

The Modelfile names the GGUF file (FROM, relative to the Modelfile), the prompt format in Ollama's Go
template syntax (TEMPLATE), the stop strings and the sampling parameters qlcode evaluates with.
The chat format is an argument: a chat model gets its family's template and stops, a base or
Python model `completion_chat`, the prompt as it is. Written to a temporary file, then renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.families import Family, family_of_tokenizer, model_type_of
from qlcode.files import read_json, write_text_atomic

# the sampling qlcode's own eval uses by default; num_ctx is set from the model's context
PARAMETERS = {"temperature": 0.2, "top_p": 0.95}
MAX_NUM_CTX = 16384  # Ollama allocates the whole context up front: no more than Code Llama's trained length


@dataclass(frozen=True)
class OllamaChat:
    """A prompt format as Ollama takes it: a Go template over .System/.Messages (or .Prompt) and its stop strings."""

    template: str
    stop: tuple[str, ...] = field(default_factory=tuple)


def instruct_chat(family: Family) -> OllamaChat:
    """The family's Instruct format as Ollama takes it."""
    return OllamaChat(family.ollama_template, family.ollama_stops)


def completion_chat(eos: str) -> OllamaChat:
    """A base or Python model: the prompt as it is, ending at the model's eos."""
    return OllamaChat("{{ .Prompt }}", (eos,))


def modelfile_text(gguf_name: str, chat: OllamaChat, context_length: int, parameters: dict | None = None) -> str:
    """The Modelfile's text for a GGUF file named `gguf_name` in the same folder."""
    if '"""' in chat.template:
        raise QlcodeError('the chat template holds """, which ends a Modelfile TEMPLATE block; it cannot be written')
    for stop in chat.stop:
        if '"' in stop or "\n" in stop:
            raise QlcodeError(f"stop string {stop!r} holds a quote or a newline, which a Modelfile PARAMETER line cannot carry")
    params = {**PARAMETERS, "num_ctx": min(context_length, MAX_NUM_CTX), **(parameters or {})}
    lines = [f"# Ollama Modelfile written by qlcode export; build the model with: ollama create NAME -f {modelfile_name(gguf_name)}",
             f"FROM ./{gguf_name}", f'TEMPLATE """{chat.template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in chat.stop]
    lines += [f"PARAMETER {key} {value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def modelfile_name(gguf_name: str) -> str:
    """model-q4_k_m.gguf -> model-q4_k_m.Modelfile: one per export, so that exports in one folder keep theirs."""
    return f"{Path(gguf_name).stem}.Modelfile"


def write_modelfile(gguf: str | Path, chat: OllamaChat, context_length: int) -> Path:
    """The GGUF's Modelfile in its folder, pointing at it."""
    gguf = Path(gguf)
    path = gguf.parent / modelfile_name(gguf.name)
    write_text_atomic(path, modelfile_text(gguf.name, chat, context_length))
    return path


def chat_for(model_dir: Path) -> OllamaChat:
    """The family's Instruct format for a model whose tokenizer carries a chat template (trained in the
    instruct template, or an Instruct model), else the prompt as it is (base and Python models)."""
    from transformers import AutoTokenizer

    read_json(model_dir / "tokenizer_config.json", "copy the tokenizer files of the base into the directory")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    family = family_of_tokenizer(tokenizer, model_type_of(model_dir))
    return instruct_chat(family) if tokenizer.chat_template else completion_chat(tokenizer.eos_token)


def context_length(model_dir: Path) -> int:
    return read_json(model_dir / "config.json", "export a merged model directory (qlcode merge ADAPTER --out DIR)")["max_position_embeddings"]
