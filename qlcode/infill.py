"""Infilling with a code model (any family in qlcode.families): generate the middle between a prefix and a suffix."""

from __future__ import annotations

import random

import torch

from qlcode.data.fim import MARK, FimIds, encode, fim_ids, infill_prompt, part
from qlcode.inference import sampling_args


@torch.no_grad()
def generate_middle(model, tokenizer, prefix: str, suffix: str, max_new_tokens: int = 64, spm: bool = False,
                    temperature: float = 0.0, seed: int = 0) -> str:
    """The middle the model writes, up to the family's end token (or eos, or max_new_tokens)."""
    ids = fim_ids(tokenizer)
    prompt = torch.tensor([infill_prompt(tokenizer, ids, prefix, suffix, spm)], device=model.device)
    torch.manual_seed(seed)
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                         eos_token_id=[ids.eot, tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                         **sampling_args(temperature))
    new = [t for t in out[0, prompt.shape[1]:].tolist() if t not in (ids.eot, tokenizer.eos_token_id)]
    return decode_middle(tokenizer, new, ids)


def decode_middle(tokenizer, tokens: list[int], ids: FimIds | None = None) -> str:
    """The middle's exact text: SentencePiece drops a leading "▁" when decoding a text's first token,
    so decode after MARK's tokens and cut MARK off (the reference's decode_infilling); byte-level
    BPE families decode as they are."""
    if ids is not None and not ids.sentencepiece:
        return tokenizer.decode(tokens, skip_special_tokens=True)
    mark = encode(tokenizer, MARK, leading_space=False)
    text = tokenizer.decode(mark + tokens, skip_special_tokens=True)
    return text[len(MARK):] if text.startswith(MARK) else tokenizer.decode(tokens, skip_special_tokens=True)


def line_cases(sources: list[str], n: int, seed: int = 0, context: int = 800) -> list[tuple[str, str, str]]:
    """(prefix, line, suffix) cases: one indented code line held out from each sampled place."""
    rng = random.Random(seed)
    candidates = []
    for si, src in enumerate(sources):
        lines = src.splitlines(keepends=True)
        for li, line in enumerate(lines):
            body = line.strip()
            if line.startswith((" ", "\t")) and len(body) >= 8 and not body.startswith(("#", '"', "'")) and line.endswith("\n"):
                candidates.append((si, li))
    cases = []
    for si, li in rng.sample(candidates, min(n, len(candidates))):
        lines = sources[si].splitlines(keepends=True)
        prefix, suffix = "".join(lines[:li]), "".join(lines[li + 1 :])
        cases.append((prefix[-context:], lines[li], suffix[: context // 2]))
    return cases


def exact_match(model, tokenizer, cases: list[tuple[str, str, str]], max_new_tokens: int = 48) -> float:
    """Share of cases whose generated middle equals the held-out line (whitespace-stripped), greedy."""
    hits = sum(generate_middle(model, tokenizer, p, s, max_new_tokens).strip() == m.strip() for p, m, s in cases)
    return hits / len(cases)


@torch.no_grad()
def middle_nll(model, tokenizer, cases: list[tuple[str, str, str]]) -> float:
    """Mean loss (nats per token) of the held-out middle and its end token after the infilling prompt:
    how well the model infills even where greedy decoding misses the exact line."""
    ids = fim_ids(tokenizer)
    total = 0.0
    for prefix, middle, suffix in cases:
        prompt = infill_prompt(tokenizer, ids, prefix, suffix)
        target = part(tokenizer, ids, middle, leading_space=False) + [ids.eot]
        x = torch.tensor([prompt + target], device=model.device)
        logp = model(input_ids=x).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        total += -logp[torch.arange(len(target)), torch.tensor(target)].mean().item()
    return total / len(cases)
