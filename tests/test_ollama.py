"""The Ollama Modelfile beside a GGUF: parsed as Ollama's grammar reads it, and each family's Go template
rendered by Go's own text/template (as Ollama runs it) to the very text the family's chat template gives."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from transformers import AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.errors import QlcodeError
from qlcode.export.ollama import OllamaChat, chat_for, completion_chat, instruct_chat, modelfile_text, write_modelfile
from qlcode.families import FAMILIES

CODELLAMA_INSTRUCT = instruct_chat(FAMILIES["codellama"])
COMPLETION = completion_chat("</s>")

# Ollama's documented Modelfile parameters (docs/modelfile.md: "Valid Parameters and Values")
OLLAMA_PARAMETERS = {"mirostat": int, "mirostat_eta": float, "mirostat_tau": float, "num_ctx": int, "repeat_last_n": int,
                     "repeat_penalty": float, "temperature": float, "seed": int, "stop": str, "num_predict": int,
                     "top_k": int, "top_p": float, "min_p": float}
COMMANDS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(COMMAND, argument) pairs as Ollama's parser reads them: `#` comments, one command per line, an
    argument in \"\"\"...\"\"\" may span lines, one in "..." may not; a command is case-insensitive."""
    out, rest = [], text
    while rest:
        line, _, after = rest.partition("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            rest = after
            continue
        command, _, arg = line.strip().partition(" ")
        assert command.upper() in COMMANDS, f"unknown Modelfile command {command!r}"
        if arg.startswith('"""'):
            body, end, rest = (arg[3:] + "\n" + after).partition('"""')
            assert end, "an unterminated \"\"\" block"
            rest = rest.removeprefix("\n")
            out.append((command.upper(), body))
            continue
        out.append((command.upper(), arg))
        rest = after
    return out


def _parameters(pairs) -> dict[str, list]:
    params: dict[str, list] = {}
    for command, arg in pairs:
        if command == "PARAMETER":
            key, _, value = arg.partition(" ")
            assert key in OLLAMA_PARAMETERS, f"{key} is not an Ollama parameter"
            if OLLAMA_PARAMETERS[key] is str:
                assert value.startswith('"') and value.endswith('"')
                value = value[1:-1]
            params.setdefault(key, []).append(OLLAMA_PARAMETERS[key](value))
    return params


def test_modelfile_beside_the_gguf_parses_and_points_at_it(tmp_path):
    gguf = tmp_path / "model-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    path = write_modelfile(gguf, CODELLAMA_INSTRUCT, 16384)
    assert path == tmp_path / "model-q4_k_m.Modelfile"
    pairs = parse_modelfile(path.read_text())
    assert [c for c, _ in pairs] == ["FROM", "TEMPLATE"] + ["PARAMETER"] * 5
    assert (tmp_path / dict(pairs)["FROM"]).resolve() == gguf.resolve()  # FROM is relative to the Modelfile
    assert dict(pairs)["TEMPLATE"] == CODELLAMA_INSTRUCT.template
    assert _parameters(pairs) == {"stop": ["</s>", "[INST]"], "temperature": [0.2], "top_p": [0.95], "num_ctx": [16384]}
    assert _parameters(parse_modelfile(modelfile_text("m.gguf", COMPLETION, 100_000))) == {
        "stop": ["</s>"], "temperature": [0.2], "top_p": [0.95], "num_ctx": [16384]}  # capped at Code Llama's trained length


def test_the_chat_format_follows_the_model_directory(tmp_path, tokenizer_dirs):
    assert chat_for(MODELS["micro-codellama"]) == CODELLAMA_INSTRUCT  # its tokenizer carries the [INST] template
    base = tmp_path / "base"  # the same tokenizer without a chat template: a base model, prompted as it is
    shutil.copytree(MODELS["micro-codellama"], base, ignore=shutil.ignore_patterns("chat_template.jinja", "*.safetensors"))
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert chat_for(base) == COMPLETION
    qwen = tmp_path / "qwen"  # Qwen2.5-Coder's real tokenizer with its Instruct template: ChatML, not [INST]
    shutil.copytree(tokenizer_dirs["qwen2-coder"], qwen)
    tok = AutoTokenizer.from_pretrained(qwen)
    tok.chat_template = FAMILIES["qwen2-coder"].chat_template
    tok.save_pretrained(qwen)
    assert chat_for(qwen) == OllamaChat(FAMILIES["qwen2-coder"].ollama_template, ("<|im_end|>", "<|endoftext|>"))


def test_what_a_modelfile_cannot_carry_is_refused():
    with pytest.raises(QlcodeError, match='the chat template holds """, which ends a Modelfile TEMPLATE block'):
        modelfile_text("m.gguf", OllamaChat('{{ .Prompt }}"""'), 4096)
    with pytest.raises(QlcodeError, match="stop string 'a\"b' holds a quote or a newline"):
        modelfile_text("m.gguf", OllamaChat("{{ .Prompt }}", ('a"b',)), 4096)


GO_RENDER = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

// Ollama's collate: the system messages joined into .System, every message (system ones too) in .Messages
func main() {
	src, _ := os.ReadFile(os.Args[1])
	var msgs []*Message
	raw, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(raw, &msgs); err != nil {
		panic(err)
	}
	var system []string
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
	}
	t := template.Must(template.New("").Parse(string(src)))
	if err := t.Execute(os.Stdout, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": msgs}); err != nil {
		panic(err)
	}
}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Write inc(x)."}],
    [{"role": "user", "content": "Write inc(x)."}, {"role": "assistant", "content": "def inc(x):\n    return x + 1"},
     {"role": "user", "content": "Now dec(x)."}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write inc(x)."},
     {"role": "assistant", "content": "def inc(x): return x + 1"}, {"role": "user", "content": "Now dec."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Square x."}, {"role": "assistant", "content": "x ** 2"}],
]


@pytest.mark.skipif(shutil.which("go") is None, reason="Go's text/template renders Ollama's templates: apt-get install golang-go")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_ollama_template_renders_as_the_familys_chat_template(tmp_path, family, tokenizer_dirs):
    (tmp_path / "render.go").write_text(GO_RENDER)
    (tmp_path / "template").write_text(instruct_chat(FAMILIES[family]).template)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), "GOCACHE": str(tmp_path / "cache"),
           "GO111MODULE": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    subprocess.run(["go", "build", "-o", "render", "render.go"], cwd=tmp_path, env=env, check=True, timeout=300)
    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"] if family == "codellama" else tokenizer_dirs[family])
    bos = tok.bos_token if FAMILIES[family].bos else ""  # llama.cpp puts bos itself where the family's tokenizer adds it
    # StarCoder2's template refuses a system turn, as the family's own does
    conversations = [c for c in CONVERSATIONS if family != "starcoder2" or all(m["role"] != "system" for m in c)]
    assert len(conversations) >= 2
    for conversation in conversations:
        (tmp_path / "messages.json").write_text(json.dumps([{"Role": m["role"], "Content": m["content"]} for m in conversation]))
        go = subprocess.run([str(tmp_path / "render"), "template", "messages.json"], cwd=tmp_path, capture_output=True,
                            text=True, check=True, timeout=60).stdout
        asking = conversation[-1]["role"] == "user"  # Ollama asks for the answer after the user's turn
        jinja = tok.apply_chat_template(conversation, chat_template=FAMILIES[family].chat_template, tokenize=False,
                                        add_generation_prompt=asking)
        assert bos + go == jinja
