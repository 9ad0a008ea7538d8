"""Code Llama infilling: a document split into prefix, middle and suffix, laid out as Code Llama does.

Token layouts (Rozière et al. 2023, section 2.3; the codellama reference `infilling_prompt_tokens`):
    PSM: <s> <PRE> prefix <SUF> suffix <MID> middle <EOT>
    SPM: <s> <PRE> <SUF> suffix <MID> prefix middle <EOT>
Each part is encoded on its own (no special tokens), so training sees exactly the token boundaries
a prompt has at inference, where the middle is generated after <MID> (PSM) or after the prefix
(SPM) until <EOT>. (The paper encodes SPM's prefix and middle together; encoding them apart keeps
the prompt's last tokens the ones an SPM prompt at inference ends with.)

SentencePiece (Llama's tokenizer) puts a space in front of every text it encodes ("x" -> "▁x").
Code Llama keeps it on the prefix but encodes the suffix and the middle without it (the reference's
`encode_infilling`): a suffix "\n    return" starts with the newline token, not with "▁".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from qlcode.errors import QlcodeError
from qlcode.recipe import FimSection

FIM_TOKENS = ("<PRE>", "<SUF>", "<MID>", "<EOT>")


@dataclass(frozen=True)
class FimIds:
    bos: int
    pre: int
    suf: int
    mid: int
    eot: int


def fim_ids(tokenizer) -> FimIds:
    """The infilling token ids of a Code Llama tokenizer (`<PRE>`, or `▁<PRE>` in the Hub's SentencePiece ones)."""
    vocab = tokenizer.get_vocab()
    found = []
    for name in FIM_TOKENS:
        tid = vocab.get(name, vocab.get("▁" + name))
        if tid is None:
            raise QlcodeError(f"this tokenizer has no {name} token: infilling needs a Code Llama-family base "
                              "(its tokenizer carries <PRE> <SUF> <MID> <EOT>)")
        found.append(tid)
    return FimIds(tokenizer.bos_token_id, *found)


def split_points(text: str, rng: random.Random, unit: str) -> tuple[str, str, str]:
    """Two random cut points, between characters or between lines: (prefix, middle, suffix)."""
    if unit == "line":
        lines = text.splitlines(keepends=True)
        i, j = sorted(rng.randint(0, len(lines)) for _ in range(2))
        return "".join(lines[:i]), "".join(lines[i:j]), "".join(lines[j:])
    i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
    return text[:i], text[i:j], text[j:]


MARK = "☺"  # the reference's marker for encode_infilling: a piece of its own in Llama's vocabulary


def encode(tokenizer, text: str, leading_space: bool = True) -> list[int]:
    """`text`'s tokens as SentencePiece encodes them: "▁" + text, or the text alone (leading_space=False).

    The reference's way: encode MARK + text and drop MARK's tokens. Going through MARK also keeps a
    text that starts with a space exact: transformers 5 puts no "▁" in front of one (" x" -> "▁x"),
    SentencePiece does ("▁", "▁x"). A tokenizer that adds nothing in front (byte-level BPE: MARK
    twice costs twice MARK's tokens) encodes the text as it is.
    """
    if not text:
        return []
    mark = tokenizer(MARK, add_special_tokens=False)["input_ids"]
    if 2 * len(mark) == len(tokenizer(MARK * 2, add_special_tokens=False)["input_ids"]):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(MARK + " " * leading_space + text, add_special_tokens=False)["input_ids"][len(mark) :]


def infill_prompt(tokenizer, ids: FimIds, prefix: str, suffix: str, spm: bool = False) -> list[int]:
    """The tokens a model continues with the middle (and then <EOT>)."""
    suffix_ids = encode(tokenizer, suffix, leading_space=False)
    if spm:
        return [ids.bos, ids.pre, ids.suf, *suffix_ids, ids.mid, *encode(tokenizer, prefix)]
    return [ids.bos, ids.pre, *encode(tokenizer, prefix), ids.suf, *suffix_ids, ids.mid]


def fim_example(tokenizer, ids: FimIds, prefix: str, middle: str, suffix: str, spm: bool) -> tuple[list[int], int]:
    """(tokens, prompt length): the prompt is everything before the middle's first token."""
    prompt = infill_prompt(tokenizer, ids, prefix, suffix, spm)
    return prompt + encode(tokenizer, middle, leading_space=False) + [ids.eot], len(prompt)


def _plain(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """A row tokenized as TRL would: (input_ids, completion_mask)."""
    if "messages" in row:
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return out["input_ids"], out["assistant_masks"]
    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        return ids, [1] * len(ids)
    prompt = tokenizer(row["prompt"])["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
    n = next((i for i, (a, b) in enumerate(zip(prompt, ids)) if a != b), len(prompt))
    return ids, [0] * n + [1] * (len(ids) - n)


def with_infilling(ds: Dataset, tokenizer, fim: FimSection, seed: int) -> Dataset:
    """Turn a share of the rows into infilling examples of their code; tokenize every row.

    The others are tokenized exactly as TRL would tokenize them. Every row gets a completion_mask
    (1 = trained when train_on_completions_only): for an infilling example, the middle and <EOT>.
    Rows are qlcode.data.pipeline's rendered rows, whose `_code` is the code their format infills.
    """
    ids = fim_ids(tokenizer)
    rng = random.Random(seed)

    def convert(row: dict) -> dict:
        code = row["_code"]
        if rng.random() < fim.rate and code.strip():
            tokens, n = fim_example(tokenizer, ids, *split_points(code, rng, fim.unit), spm=rng.random() < fim.spm_rate)
            return {"input_ids": tokens, "completion_mask": [0] * n + [1] * (len(tokens) - n)}
        tokens, mask = _plain(tokenizer, row)
        return {"input_ids": tokens, "completion_mask": mask}

    return ds.map(convert, remove_columns=ds.column_names)
