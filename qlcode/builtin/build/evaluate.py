"""Measure builtin:micro-codellama against its untrained initialisation, on held-out stdlib code.

    python -m qlcode.builtin.build.evaluate

Three numbers, each on modules the pretraining never saw (HELD_OUT_MODULES):
- perplexity of the held-out source, read as plain causal LM;
- the share of completions, sampled at temperature 0.2 from a held-out function's signature and
  docstring and cut at the next top-level statement, that `ast.parse` accepts;
- exact match of infilled held-out lines (prefix-suffix-middle prompt, greedy), and the loss of
  the true line and <EOT> after that prompt (nats per token), which moves where exact match cannot.
Infilling cases keep 300 characters of prefix and 150 of suffix: the model was trained on
384-token sequences.
"""

from __future__ import annotations

import ast
import gzip
import json
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from qlcode.builtin import DATASETS, MODELS
from qlcode.builtin.build.micro_codellama import untrained_model
from qlcode.builtin.build.pretrain import documents
from qlcode.builtin.stdlib_corpus import iter_sources
from qlcode.infill import exact_match, line_cases, middle_nll


def pretrained_model() -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(MODELS["micro-codellama"], dtype=torch.float32).eval()


@torch.no_grad()
def perplexity(model, tokenizer, docs: list[str], seq_len: int = 384) -> float:
    nll, count = 0.0, 0
    for doc in docs:
        ids = tokenizer(doc, return_tensors="pt")["input_ids"][:, :seq_len]
        if ids.shape[1] < 2:
            continue
        loss = model(input_ids=ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def completion_prompts() -> list[str]:
    """Signature and docstring of each held-out function of builtin:stdlib-python-instruct."""
    with gzip.open(DATASETS["stdlib-python-instruct"], "rt") as f:
        rows = [json.loads(line) for line in f]
    prompts = []
    for r in rows:
        if r["split"] != "test":
            continue
        signature = r["instruction"].split("`")[1]
        doc = r["instruction"].split("\n\n", 1)[1].replace('"""', "'''")
        prompts.append(f'def {signature}:\n    """{doc}\n    """\n')
    return prompts


def first_statement(completion: str) -> str:
    """The completion up to the next top-level statement (where the function ends)."""
    out = []
    for line in completion.splitlines(keepends=True):
        if out and line[:1] not in (" ", "\t", "\n", ""):
            break
        out.append(line)
    return "".join(out)


@torch.no_grad()
def parse_rate(model, tokenizer, prompts: list[str], max_new_tokens: int = 128) -> float:
    ok = 0
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        torch.manual_seed(i)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.2,
                             top_p=0.95, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.unk_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        try:
            ast.parse(prompt + first_statement(text))
            ok += 1
        except SyntaxError:
            pass
    return ok / len(prompts)


INFILL_CONTEXT = 300


def held_out_infill_cases(n: int = 200) -> list[tuple[str, str, str]]:
    return line_cases([src for _, src in iter_sources(held_out=True)], n, context=INFILL_CONTEXT)


def measure(model, tokenizer) -> dict[str, float]:
    cases = held_out_infill_cases()
    return {
        "held-out perplexity": perplexity(model, tokenizer, documents(held_out=True)),
        "completions that parse (T=0.2)": parse_rate(model, tokenizer, completion_prompts()),
        "infilled lines, exact match": exact_match(model, tokenizer, cases),
        "infilled lines, loss of the true line (nats/token)": middle_nll(model, tokenizer, cases),
    }


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    results = {"untrained": measure(untrained_model(), tokenizer), "pretrained": measure(pretrained_model(), tokenizer)}
    print("| metric | untrained | pretrained |\n| --- | --- | --- |")
    for metric in results["untrained"]:
        u, p = results["untrained"][metric], results["pretrained"][metric]
        fmt = (lambda x: f"{x:.2f}") if "perplexity" in metric or "loss" in metric else (lambda x: f"{100 * x:.1f}%")
        print(f"| {metric} | {fmt(u)} | {fmt(p)} |")


if __name__ == "__main__":
    main()
