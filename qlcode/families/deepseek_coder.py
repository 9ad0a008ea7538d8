"""DeepSeek-Coder (DeepSeek; Llama architecture with linear RoPE scaling): its `### Instruction:` /
`### Response:` format ending answers with <|EOT|>, and its own FIM tokens.

Instruct format (deepseek-coder-*-instruct's tokenizer_config.json): bos, then the default system
prompt unless the conversation has one, then `### Instruction:\\n{user}\\n` and
`### Response:\\n{answer}\\n<|EOT|>\\n` per turn; the answer, "\\n" and <|EOT|> carry loss. (Theirs asks for
an answer with `### Response:`; ours with `### Response:\\n`, so a prompt ends where a trained answer
begins.) The
Instruct tokenizers' eos is <|EOT|>, the bases' <｜end▁of▁sentence｜>; both add bos
<｜begin▁of▁sentence｜>. Pad: the vocabulary's own <pad> (id 32018).
Infilling (the DeepSeek-Coder README's "code insertion" example and paper, section 3.1): PSM only,
`<｜begin▁of▁sentence｜><｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>{middle}<｜end▁of▁sentence｜>`.
No repository-level tokens: repository rows put each file under a `# file: NAME/PATH` comment, as Code Llama's.
"""

from qlcode.families.base import LLAMA_LAYERS, Family, Gguf, Infilling

SYSTEM = ("You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, "
          "and you only answer questions related to computer science. For politically sensitive questions, security "
          "and privacy issues, and other non-computer science questions, you will refuse to answer\\n")
CHAT_TEMPLATE = (
    "{% set ns = namespace(found=false) %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{% set ns.found = true %}{% endif %}{% endfor %}"
    "{{ bos_token }}{% if not ns.found %}{{ '" + SYSTEM + "' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n' }}"
    "{% else %}{{ '### Response:\\n' }}{% generation %}{{ message['content'] + '\\n<|EOT|>' }}{% endgeneration %}"
    "{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

# The same in Ollama's Go template syntax (llama.cpp adds bos); an answer is asked for after the last user turn.
OLLAMA_TEMPLATE = (
    "{{ if .System }}{{ .System }}{{ else }}" + SYSTEM.replace("\\n", "\n") + "{{ end }}"
    "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    "{{ if eq .Role \"user\" }}### Instruction:\n{{ .Content }}\n{{ if $last }}### Response:\n{{ end }}"
    "{{ else if eq .Role \"assistant\" }}### Response:\n{{ .Content }}\n<|EOT|>\n{{ end }}{{ end }}"
)

FAMILY = Family(
    name="deepseek-coder",
    title="DeepSeek-Coder",
    model_types=("llama",),
    markers=("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    chat_template=CHAT_TEMPLATE,
    pad="<pad>",
    infilling=Infilling("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>", bos=True),
    gguf=Gguf("llama", pre="deepseek-coder", layer_names=LLAMA_LAYERS, permute_qk=True, eot="<|EOT|>"),
    licence="other",  # the DeepSeek License Agreement (license_name: deepseek on the Hub)
    tags=("deepseek-coder",),
    shipped={f"deepseek-ai/deepseek-coder-{size}-{variant}": (f"deepseek-coder-{size}-base.json", {})
             for size in ("6.7b", "33b") for variant in ("base", "instruct")},
    ollama_template=OLLAMA_TEMPLATE,
    ollama_stops=("<|EOT|>",),
    turn_end="<|EOT|>",
    bos=True,
)
