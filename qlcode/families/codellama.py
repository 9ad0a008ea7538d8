"""Code Llama (Meta; Llama architecture): `[INST]` Instruct format, <PRE> <SUF> <MID> <EOT> infilling.

Instruct format: `<s>[INST] {user} [/INST] {answer} </s>` per turn (a system prompt goes in
`<<SYS>>` inside the first turn), as the released CodeLlama-*-Instruct-hf tokenizers render it; our
copy marks the answers with `{% generation %}` so TRL trains on exactly the answer tokens and eos.
Infilling (Rozière et al. 2023, section 2.3; the reference's `infilling_prompt_tokens`):
PSM `<s> <PRE> prefix <SUF> suffix <MID>` and SPM `<s> <PRE> <SUF> suffix <MID> prefix`, the middle
ending with <EOT>; SentencePiece's "▁" stays on the prefix only. No repository-level tokens: repository
rows put each file under a `# file: NAME/PATH` comment (Infilling.repository), as qlcode always has.
The tokenizers have no pad token: we pad with <unk>, which the model never has to predict.
"""

from qlcode.families.base import LLAMA_LAYERS, Family, Gguf, Infilling

CHAT_TEMPLATE = (
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


def _shipped() -> dict[str, tuple[str, dict]]:
    """Every Code Llama Hub id -> its size's config. The 7B and 13B Python models were not trained
    for infilling: their vocabulary lacks the 16 infilling pieces (vocab_size 32000, not 32016)."""
    out = {}
    for size in ("7b", "13b", "34b", "70b"):
        for variant in ("", "-python", "-instruct"):
            overrides = {"vocab_size": 32000} if variant == "-python" and size in ("7b", "13b") else {}
            for org in ("codellama", "meta-llama"):
                out[f"{org}/codellama-{size}{variant}-hf"] = (f"CodeLlama-{size}-hf.json", overrides)
    return out


# The Instruct format in Ollama's Go template syntax: Go templates have no trim, contents go in as they are.
OLLAMA_TEMPLATE = (
    '{{- $first := true }}{{ range .Messages }}'
    '{{ if eq .Role "user" }}{{ if not $first }}<s>{{ end }}[INST] '
    '{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}'
    '{{ .Content }} [/INST]{{ $first = false }}'
    '{{ else if eq .Role "assistant" }} {{ .Content }} </s>{{ end }}'
    '{{ end }}'
)

FAMILY = Family(
    name="codellama",
    title="Code Llama",
    model_types=("llama",),
    markers=("<PRE>", "<SUF>", "<MID>", "<EOT>"),  # "▁<PRE>"... in the Hub's SentencePiece vocabulary
    chat_template=CHAT_TEMPLATE,
    pad="<unk>",
    infilling=Infilling("<PRE>", "<SUF>", "<MID>", "<EOT>", layouts=("psm", "spm"), bos=True, sentencepiece=True),
    gguf=Gguf("llama", pre="gpt-2", layer_names=LLAMA_LAYERS, permute_qk=True, eot="<EOT>"),
    licence="llama2",
    tags=("code-llama",),
    shipped=_shipped(),
    ollama_template=OLLAMA_TEMPLATE,
    ollama_stops=("</s>", "[INST]"),
    bos=True,
)
