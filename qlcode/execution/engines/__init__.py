"""Engines that turn prompts into answers, many at a time: transformers (any machine) or vLLM (CUDA).

An engine takes a list of `Request`s (token ids, where the answer ends, a seed) and returns one
text per request. Each request's randomness comes from its own seed only, so an answer does not
depend on which other requests share its batch. The callers (qlcode.execution.generate) decide
the prompts and seeds; the engines only generate. `llama_cpp.py` answers from an exported GGUF
file for `qlcode eval --gguf` (what a user runs after export, rather than the adapter).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from qlcode.errors import QlcodeError

ENGINES = ("transformers", "vllm")
TOP_P = 0.95
TOP_K = 50  # transformers' generate applies top-k 50 whenever it samples: every engine samples the same way


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]  # token ids, special tokens included
    stops: tuple[str, ...]  # the answer ends after the first token that completes one of these (or at eos)
    seed: int


@dataclass(frozen=True)
class Sampling:
    temperature: float  # 0 = greedy
    max_new_tokens: int
    top_p: float = TOP_P
    top_k: int = TOP_K


class Engine(Protocol):
    tokenizer: object  # the model's (transformers) tokenizer: prompts are token ids
    rows: int  # requests decoding at once

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[tuple[int, str]]:
        """(request index, answer) as each request ends, in any order."""
        ...

    def base_only(self) -> AbstractContextManager: ...


class EngineError(QlcodeError):
    """An engine that cannot run here (vLLM without CUDA or without the package)."""


def require_vllm(what: str) -> None:
    """Stop early, in one line, where vLLM cannot run: no CUDA GPU, or the package missing."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise EngineError(f"{what} needs a CUDA GPU (vLLM generates on CUDA only); "
                          "on this machine use the transformers engine (the default)")
    if importlib.util.find_spec("vllm") is None:
        raise EngineError(f'{what} needs vLLM: pip install "qlcode[vllm]"')

