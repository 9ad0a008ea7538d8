"""Prompt templates: how a row becomes the text a Code Llama-family model is trained on.

`codellama-instruct` is Code Llama Instruct's own format, `<s>[INST] {user} [/INST] {answer} </s>`
per turn (an optional system prompt goes in `<<SYS>>` inside the first turn), as the released
CodeLlama-*-Instruct-hf tokenizers render it. Our copy marks the answers with `{% generation %}` so
TRL can train on exactly the answer tokens and eos, and it is set on every tokenizer a
codellama-instruct recipe uses, since the Hub tokenizers ship the template without those marks.
"""

CODELLAMA_INSTRUCT_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ ' ' + content | trim + ' ' + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)


def comment_prompt(instruction: str, context: str = "") -> str:
    """An instruction as Python comment lines, the natural prompt for a base or Python code model."""
    text = instruction.strip() + (f"\n\n{context.strip()}" if context.strip() else "")
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


# The same format in Ollama's Go template syntax (its Modelfile TEMPLATE), for GGUF exports: .System
# holds the system messages, .Messages the turns; llama.cpp adds the first <s> itself. Go templates
# have no trim: contents go in as they are. tests/test_ollama.py renders both on the same conversations.
CODELLAMA_INSTRUCT_OLLAMA_TEMPLATE = (
    '{{- $first := true }}{{ range .Messages }}'
    '{{ if eq .Role "user" }}{{ if not $first }}<s>{{ end }}[INST] '
    '{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}'
    '{{ .Content }} [/INST]{{ $first = false }}'
    '{{ else if eq .Role "assistant" }} {{ .Content }} </s>{{ end }}'
    '{{ end }}'
)
