"""Prompt text that does not depend on the model family (each family's chat template is in qlcode.families)."""


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
