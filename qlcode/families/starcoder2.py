"""StarCoder2 (BigCode; its own architecture: LayerNorm with bias, GELU MLP c_fc/c_proj with bias,
grouped-query attention with sliding windows): FIM and repository tokens, StarCoder2-Instruct's format.

Instruct format (bigcode/starcoder2-15b-instruct-v0.1's tokenizer_config.json): bos, its fixed
system line, then `### Instruction\\n{user}\\n\\n` and `### Response\\n{answer}<|endoftext|>\\n\\n`
per turn; the answer and eos carry loss. (Theirs appends `### Response\\n` after every
conversation; ours only with add_generation_prompt, so a training row does not end in an empty
turn.) bos = eos = unk = <|endoftext|>; we pad with <fim_pad>, the vocabulary's padding token.
Infilling (the StarCoder2 paper, section 5.1, and BigCode's Megatron-LM FIM permutation): PSM
`<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>` and SPM
`<fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}`, the middle ending with <|endoftext|>;
repository level: `<repo_name>{name}<file_sep>{path}\\n{code}<file_sep>{path}\\n{code}...`.
"""

from qlcode.families.base import Family, Gguf, Infilling

SYSTEM = ("You are an exceptionally intelligent coding assistant that consistently delivers accurate and reliable "
          "responses to user instructions.\\n\\n")
CHAT_TEMPLATE = (
    "{{ bos_token }}{{ '" + SYSTEM + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System messages are not allowed in this template.') }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Response\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response\\n' }}{% endif %}"
)

# The same in Ollama's Go template syntax, bos included (llama.cpp adds none for StarCoder2); no system
# turn, as the family's template allows none.
OLLAMA_TEMPLATE = (
    "<|endoftext|>" + SYSTEM.replace("\\n", "\n") + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    "{{ if eq .Role \"user\" }}### Instruction\n{{ .Content }}\n\n{{ if $last }}### Response\n{{ end }}"
    "{{ else if eq .Role \"assistant\" }}### Response\n{{ .Content }}<|endoftext|>\n\n{{ end }}{{ end }}"
)

LAYERS = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}

FAMILY = Family(
    name="starcoder2",
    title="StarCoder2",
    model_types=("starcoder2",),
    markers=("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    chat_template=CHAT_TEMPLATE,
    pad="<fim_pad>",
    infilling=Infilling("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", layouts=("psm", "spm"),
                        repo_name="<repo_name>", file_sep="<file_sep>", repo_layout=("{name}", "{path}\n{text}")),
    gguf=Gguf("starcoder2", pre="starcoder", layer_names=LAYERS, permute_qk=False, layer_norm=True),
    licence="bigcode-openrail-m",
    tags=("starcoder2",),
    shipped={f"bigcode/starcoder2-{size}": (f"starcoder2-{size}.json", {}) for size in ("3b", "7b", "15b")},
    ollama_template=OLLAMA_TEMPLATE,
    ollama_stops=("<|endoftext|>", "### Instruction"),
)
