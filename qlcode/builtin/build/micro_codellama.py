"""Build builtin:micro-codellama: a BPE tokenizer trained on stdlib Python and a small Llama.

    python -m qlcode.builtin.build.micro_codellama

The model mirrors Code Llama's layout at a tiny scale: the Llama architecture with RoPE base 1e6
and 16384 positions, Code Llama's special tokens (<unk> <s> </s> and the infilling tokens
<PRE> <SUF> <MID> <EOT>), no pad token (as the real tokenizers), bos added by the tokenizer, and
the Instruct chat template. Weights are a seeded random init here, stored in bf16 to keep the
package small; pretraining replaces them.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from qlcode.builtin import MODELS
from qlcode.builtin.stdlib_corpus import iter_sources
from qlcode.families.codellama import CHAT_TEMPLATE as CODELLAMA_INSTRUCT_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"]
VOCAB_SIZE = 4096
ARCH = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=16384,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
ROPE_THETA = 1_000_000.0


def train_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator((src for _, src in iter_sources(held_out=False)), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=ARCH["max_position_embeddings"],
        padding_side="right",
        chat_template=CODELLAMA_INSTRUCT_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def untrained_model() -> LlamaForCausalLM:
    """The seeded initialisation build() shipped before pretraining, in fp32."""
    config = LlamaConfig.from_pretrained(MODELS["micro-codellama"])
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(torch.bfloat16).float().eval()


def build() -> None:
    out = MODELS["micro-codellama"]
    tokenizer = train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        **ARCH,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = None
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.2f}M parameters, vocab {len(tokenizer)}")


if __name__ == "__main__":
    build()
