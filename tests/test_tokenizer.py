"""Code Llama's real tokenizer (SentencePiece, tests/data/codellama-tokenizer): infilling prompts,
the [INST] template and padding token for token against Meta's reference and transformers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.data.fim import encode, fim_example, fim_ids, infill_prompt
from qlcode.models import load_tokenizer

BOS, EOS, UNK = 1, 2, 0
PRE, SUF, MID, EOT = 32007, 32008, 32009, 32010
GGUF = "ggml-vocab-llama-spm.gguf"

# Meta's codellama `infilling_prompt_tokens` on its example (as quoted in llama.cpp issue #3503)
PREFIX, SUFFIX = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"
META_PSM = [BOS, PRE, 822, 3349, 29918, 5464, 29918, 294, 18869, 29898, 29879, 29901, 851, 29897, 1599, 851, 29901,
            13, 1678, 9995, 29871, SUF, 13, 1678, 736, 1121, 13, MID]
PREFIX_IDS, SUFFIX_IDS = META_PSM[2:21], META_PSM[22:27]  # the prefix with SentencePiece's "▁", the suffix without


@pytest.fixture(scope="module")
def tok(codellama_tokenizer_dir):
    return load_tokenizer(str(codellama_tokenizer_dir))


def test_the_rebuilt_tokenizer_is_code_llamas(codellama_tokenizer_dir, tok):
    assert type(tok).__name__ == "CodeLlamaTokenizer" and tok.vocab_size == 32016
    assert tok.convert_ids_to_tokens([PRE, SUF, MID, EOT, 32000, 32015]) == [
        "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "▁<SU", "▁<EOT><EOT><EOT><EOT><EOT><EOT>"]
    ids = fim_ids(tok)
    assert (ids.bos, ids.pre, ids.suf, ids.mid, ids.eot) == (BOS, PRE, SUF, MID, EOT)
    assert tok("def f(x):")["input_ids"] == [BOS, 822, 285, 29898, 29916, 1125]
    # llama.cpp's expected tokenizations of Llama 2's vocabulary (made with the Hub's tokenizer)
    texts = (codellama_tokenizer_dir / f"{GGUF}.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(t) for t in line.split()] for line in (codellama_tokenizer_dir / f"{GGUF}.out").read_text().splitlines()]
    assert len(texts) == len(expected) == 46
    assert [encode(tok, text) for text in texts] == expected


def test_infilling_prompts_are_metas_token_for_token(tok):
    ids = fim_ids(tok)
    assert infill_prompt(tok, ids, PREFIX, SUFFIX) == META_PSM
    assert infill_prompt(tok, ids, PREFIX, SUFFIX, spm=True) == [BOS, PRE, SUF, *SUFFIX_IDS, MID, *PREFIX_IDS]
    # a suffix or middle never starts with SentencePiece's "▁" (29871); a prefix that starts with a space keeps both
    assert encode(tok, "\n    return result\n", leading_space=False) == SUFFIX_IDS
    assert encode(tok, " x", leading_space=False) == [921] and encode(tok, " x") == [29871, 921]


def test_transformers_fill_me_prompt_differs_only_by_a_space_before_the_suffix(tok):
    """transformers 5.24's CodeLlamaTokenizer builds the same prompt from `<FILL_ME>`, except that
    it encodes the suffix with the leading space Code Llama was not trained with."""
    ids = fim_ids(tok)
    for prefix, suffix in [(PREFIX, SUFFIX), ("class A:\n    def __init__(", "):\n        pass\n"),
                           ("x = [", "for i in range(3)]\n")]:
        theirs = tok(f"{prefix}<FILL_ME>{suffix}")["input_ids"]
        assert theirs == [BOS, PRE, *encode(tok, prefix), SUF, *encode(tok, " " + suffix, leading_space=False), MID]
        ours = infill_prompt(tok, ids, prefix, suffix)
        assert ours == [BOS, PRE, *encode(tok, prefix), SUF, *encode(tok, suffix, leading_space=False), MID] != theirs
        theirs_spm = tok(prefix, suffix=suffix, suffix_first=True)["input_ids"]
        assert theirs_spm == [BOS, PRE, SUF, *encode(tok, " " + suffix, leading_space=False), MID, *encode(tok, prefix)]


def test_training_examples_put_the_middle_after_the_prompt_without_a_space(tok):
    ids = fim_ids(tok)
    middle = "    return result\n"  # Meta's suffix without its newline: the same tokens, minus the 13
    for spm in (False, True):
        tokens, n = fim_example(tok, ids, PREFIX, middle, "\n", spm)
        assert tokens[:n] == infill_prompt(tok, ids, PREFIX, "\n", spm) and tokens[n:] == [*SUFFIX_IDS[1:], EOT]


def test_byte_level_bpe_encodes_every_part_as_it_is():
    micro = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    for text in [" x = 1\n", "\n    return a + b\n", "'s", "☺(", "def f():"]:
        plain = micro(text, add_special_tokens=False)["input_ids"]
        assert encode(micro, text) == encode(micro, text, leading_space=False) == plain


def test_instruct_template_renders_metas_chat_tokens_and_masks_the_answers(codellama_tokenizer_dir):
    tok = load_tokenizer(str(codellama_tokenizer_dir), template="codellama-instruct")
    turns = [("Write f.", "def f():\n    return 1"), ("Again, shorter.", "f = lambda: 1")]
    messages = [{"role": "system", "content": "Answer in Python."}]
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    # Meta's chat_completion: each turn is encode(f"[INST] {user} [/INST] {answer} ", bos=True, eos=True)
    expected, mask = [], []
    for i, (user, answer) in enumerate(turns):
        user = f"<<SYS>>\nAnswer in Python.\n<</SYS>>\n\n{user}" if i == 0 else user
        prompt = encode(tok, f"[INST] {user} [/INST]")
        turn = encode(tok, f"[INST] {user} [/INST] {answer} ")
        assert turn[: len(prompt)] == prompt
        expected += [BOS, *turn, EOS]
        mask += [0] * (1 + len(prompt)) + [1] * (len(turn) - len(prompt) + 1)
    assert out["input_ids"] == expected and expected[:4] == [BOS, 518, 25580, 29962]  # "<s>▁[INST]"
    assert out["assistant_masks"] == mask
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(trained) == "def f():\n    return 1 </s> f = lambda: 1 </s>"


def test_pads_with_unk_never_eos(tok):
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token_id, tok.padding_side) == ("<unk>", UNK, EOS, "right")
    batch = tok(["def f(x):", "x"], padding=True)
    assert batch["input_ids"][1] == [BOS, 921, UNK, UNK, UNK, UNK] and batch["attention_mask"][1] == [1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("middle", ["    return result\n", "x = 1", " y", "\n\n"])
def test_a_generated_middle_decodes_to_its_exact_text(codellama_tokenizer_dir, middle):
    """SentencePiece drops a first token's "▁" when decoding: 4 spaces of indent came back as 3."""
    from qlcode.data.fim import encode
    from qlcode.infill import decode_middle

    tok = load_tokenizer(str(codellama_tokenizer_dir))
    tokens = encode(tok, middle, leading_space=False)
    assert decode_middle(tok, tokens) == middle
    if middle.startswith(" "):
        assert tok.decode(tokens) != middle  # what the plain decode gives
