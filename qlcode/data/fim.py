"""Infilling: a document split into prefix, middle and suffix, laid out as the base's family does.

Each family (qlcode.families) names its tokens and layouts; Code Llama's (Rozière et al. 2023,
section 2.3; the codellama reference `infilling_prompt_tokens`):
    PSM: <s> <PRE> prefix <SUF> suffix <MID> middle <EOT>
    SPM: <s> <PRE> <SUF> suffix <MID> prefix middle <EOT>
Qwen2.5-Coder, DeepSeek-Coder and StarCoder2 use the same two layouts with their own tokens, no bos
(DeepSeek-Coder: bos) and their eos after the middle; Qwen2.5-Coder and DeepSeek-Coder were trained
with PSM only. Each part is encoded on its own (no special tokens), so training sees exactly the
token boundaries a prompt has at inference, where the middle is generated after the middle token
(PSM) or after the prefix (SPM) until the end token. (The paper encodes SPM's prefix and middle
together; encoding them apart keeps the prompt's last tokens the ones an SPM prompt at inference
ends with.)

SentencePiece (Llama's tokenizer) puts a space in front of every text it encodes ("x" -> "▁x").
Code Llama keeps it on the prefix but encodes the suffix and the middle without it (the reference's
`encode_infilling`): a suffix "\n    return" starts with the newline token, not with "▁". The
byte-level BPE families encode every part as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from qlcode.errors import DataError, QlcodeError
from qlcode.families import family_of_tokenizer
from qlcode.families.base import Family
from qlcode.recipe import FimSection


@dataclass(frozen=True)
class FimIds:
    bos: int | None  # None: the family's prompts start without bos
    pre: int
    suf: int
    mid: int
    eot: int  # the token that ends the middle
    title: str = "Code Llama"  # the family, for messages
    spm: bool = True  # the family was trained with suffix-prefix-middle too
    sentencepiece: bool = True  # Code Llama's encoding of each part (see `encode`)


def fim_ids(tokenizer, family: Family | None = None) -> FimIds:
    """The infilling token ids of the tokenizer's family (Code Llama's `<PRE>` is `▁<PRE>` in the Hub's SentencePiece ones)."""
    family = family or family_of_tokenizer(tokenizer)
    fim = family.infilling
    vocab = tokenizer.get_vocab()
    tokens = (fim.prefix, fim.suffix, fim.middle, fim.end)
    found = []
    for name in tokens:
        tid = vocab.get(name, vocab.get("▁" + name))
        if tid is None:
            raise QlcodeError(f"this tokenizer has no {name} token: infilling needs a {family.title}-family base "
                              f"(its tokenizer carries {' '.join(tokens)})")
        found.append(tid)
    return FimIds(tokenizer.bos_token_id if fim.bos else None, *found, title=family.title, spm="spm" in fim.layouts,
                  sentencepiece=fim.sentencepiece)


def split_points(text: str, rng: random.Random, unit: str, keep: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """Two random cut points, between characters or between lines: (prefix, middle, suffix).

    A character cut strictly inside one of the `keep` strings (a repository row's <file_sep>...) moves to
    its start, so the token stays whole (a cut between lines cannot fall inside one: they hold no newline).
    """
    if unit == "line":
        lines = text.splitlines(keepends=True)
        i, j = sorted(rng.randint(0, len(lines)) for _ in range(2))
        return "".join(lines[:i]), "".join(lines[i:j]), "".join(lines[j:])
    i, j = sorted(_outside(text, rng.randint(0, len(text)), keep) for _ in range(2))
    return text[:i], text[i:j], text[j:]


def _outside(text: str, i: int, keep: tuple[str, ...]) -> int:
    """Cut point i, or the start of the `keep` string it falls strictly inside."""
    for token in keep:
        start = text.find(token, max(0, i - len(token) + 1))
        if -1 < start < i:
            return start
    return i


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


def part(tokenizer, ids: FimIds, text: str, leading_space: bool) -> list[int]:
    """One part of an infilling example as its family encodes it."""
    if ids.sentencepiece:
        return encode(tokenizer, text, leading_space)
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def infill_prompt(tokenizer, ids: FimIds, prefix: str, suffix: str, spm: bool = False) -> list[int]:
    """The tokens a model continues with the middle (and then the family's end token)."""
    if spm and not ids.spm:
        raise QlcodeError(f"{ids.title} was trained with prefix-suffix-middle infilling only; "
                          "ask for the suffix-prefix-middle layout with a family that has it")
    bos = [] if ids.bos is None else [ids.bos]
    suffix_ids = part(tokenizer, ids, suffix, leading_space=False)
    if spm:
        return [*bos, ids.pre, ids.suf, *suffix_ids, ids.mid, *part(tokenizer, ids, prefix, True)]
    return [*bos, ids.pre, *part(tokenizer, ids, prefix, True), ids.suf, *suffix_ids, ids.mid]


def fim_example(tokenizer, ids: FimIds, prefix: str, middle: str, suffix: str, spm: bool) -> tuple[list[int], int]:
    """(tokens, prompt length): the prompt is everything before the middle's first token."""
    prompt = infill_prompt(tokenizer, ids, prefix, suffix, spm)
    return prompt + part(tokenizer, ids, middle, leading_space=False) + [ids.eot], len(prompt)


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
    family = family_of_tokenizer(tokenizer)
    ids = fim_ids(tokenizer, family)
    if fim.spm_rate > 0 and not ids.spm:
        raise DataError(f"data.fim.spm_rate: {ids.title} was trained with prefix-suffix-middle infilling only; "
                        "set data.fim.spm_rate: 0")
    rng = random.Random(seed)

    def convert(row: dict) -> dict:
        code = row["_code"]
        if rng.random() < fim.rate and code.strip():
            pieces = split_points(code, rng, fim.unit, family.infilling.repo_tokens)
            tokens, n = fim_example(tokenizer, ids, *pieces, spm=rng.random() < fim.spm_rate)
            return {"input_ids": tokens, "completion_mask": [0] * n + [1] * (len(tokens) - n)}
        tokens, mask = _plain(tokenizer, row)
        return {"input_ids": tokens, "completion_mask": mask}

    return ds.map(convert, remove_columns=ds.column_names)
