"""Qwen2.5-Coder (Alibaba; Qwen2 architecture: q/k/v with bias, RMSNorm, SwiGLU): ChatML, FIM and
repository tokens.

Instruct format (Qwen2.5-Coder-*-Instruct's tokenizer_config.json, without its tool-call branch):
`<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n
{answer}<|im_end|>\\n`, with Qwen's default system prompt when the conversation has none; the answer
and its <|im_end|> carry loss. The Instruct tokenizers end a turn (eos) with <|im_end|>; the bases
with <|endoftext|>, which is also Qwen's pad token (the vocabulary has no unk). No bos.
Infilling (the Qwen2.5-Coder README and technical report, section 3): PSM only,
`<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}<|endoftext|>`; repository level:
`<|repo_name|>{name}\\n<|file_sep|>{path}\\n{code}\\n...`.
"""

from qlcode.families.base import LLAMA_LAYERS, Family, Gguf, Infilling

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same in Ollama's Go template syntax; an answer is asked for after the last user turn.
OLLAMA_TEMPLATE = (
    "<|im_start|>system\n{{ if .System }}{{ .System }}{{ else }}" + SYSTEM + "{{ end }}<|im_end|>\n"
    "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    "{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ if $last }}<|im_start|>assistant\n{{ end }}"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
)

SIZES = {"1.5b": "Qwen2.5-Coder-1.5B.json", "7b": "Qwen2.5-Coder-7B.json", "14b": "Qwen2.5-Coder-14B.json",
         "32b": "Qwen2.5-Coder-32B.json"}

FAMILY = Family(
    name="qwen2-coder",
    title="Qwen2.5-Coder",
    model_types=("qwen2",),
    markers=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    chat_template=CHAT_TEMPLATE,
    pad="<|endoftext|>",
    infilling=Infilling("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>",
                        repo_name="<|repo_name|>", file_sep="<|file_sep|>"),
    gguf=Gguf("qwen2", pre="qwen2", layer_names=LLAMA_LAYERS, permute_qk=False, eot="<|im_end|>"),
    licence="apache-2.0",
    tags=("qwen2.5-coder", "qwen2"),
    shipped={f"qwen/qwen2.5-coder-{size}{variant}": (file, {})
             for size, file in SIZES.items() for variant in ("", "-instruct")},
    ollama_template=OLLAMA_TEMPLATE,
    ollama_stops=("<|im_end|>", "<|endoftext|>"),
    turn_end="<|im_end|>",
)
