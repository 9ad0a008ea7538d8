"""The vLLM engine (`--engine vllm`, CUDA only, `pip install "qlcode[vllm]"`): the base served by
vLLM, the adapter applied through vLLM's LoRA support (a LoRARequest on every request), each
request sampled with its own seed (SamplingParams(seed=...)).

vLLM schedules its own batches (continuous batching over paged attention); this engine hands it
`rows` requests at a time so that the sandbox runs the first problems while the next generate.
A 4-bit run's base is quantized by vLLM in flight (quantization="bitsandbytes", NF4), as the
adapter was trained; its numbers are vLLM's kernels', not bitsandbytes', so answers match the
transformers engine's within sampling noise, not token for token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qlcode.execution.engines import EngineError, Request, Sampling

ROWS = 256  # requests per vLLM call: enough to fill its batches, few enough to overlap execution
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VllmEngine:
    def __init__(self, base: str, tokenizer, adapter: str | None, bits: int | None, rows: int | None = None) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from qlcode.models import base_path

        self.tokenizer, self.rows = tokenizer, rows or ROWS
        lora = {}
        if adapter is not None:
            lora = {"enable_lora": True, "max_lora_rank": lora_rank(Path(adapter))}
        self.llm = LLM(model=base_path(base), tokenizer=base_path(base), seed=0, max_num_seqs=self.rows,
                       quantization="bitsandbytes" if bits == 4 else None, **lora)
        self.lora = LoRARequest("adapter", 1, str(Path(adapter).resolve())) if adapter is not None else None

    @classmethod
    def open(cls, model: str | None, adapter: str | None, quant, rows: int | None) -> tuple[VllmEngine, bool]:
        """The engine on a base (and adapter run), and whether to prompt it as an Instruct model;
        an adapter's base, quantization and tokenizer come from its run, as `load_model` reads them."""
        from qlcode.inference import is_instruct
        from qlcode.models import load_tokenizer, quantization_of
        from qlcode.runs import RunDir

        if adapter is None:
            if model is None:
                raise EngineError("give a base model (--model) or an adapter (--adapter)")
            return cls(model, load_tokenizer(model), None, quant.bits, rows), is_instruct(model)
        run = RunDir(adapter)
        run.require_adapter()
        recipe = run.recipe()
        base = model or recipe.model.base
        return (cls(base, load_tokenizer(str(run.path)), str(run.path), quantization_of(recipe).bits, rows),
                is_instruct(recipe.model.base, recipe.data.template))

    @contextmanager
    def base_only(self):
        """Requests without the LoRA: the base alone, for --compare."""
        lora, self.lora = self.lora, None
        try:
            yield
        finally:
            self.lora = lora

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[tuple[int, str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling.temperature <= 0
        for start in range(0, len(requests), self.rows):
            chunk = requests[start:start + self.rows]
            params = [SamplingParams(temperature=0.0 if greedy else sampling.temperature,
                                     top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else sampling.top_k,
                                     max_tokens=sampling.max_new_tokens, seed=r.seed, stop=list(r.stops) or None,
                                     include_stop_str_in_output=True)  # as transformers' generate keeps the stop
                      for r in chunk]
            prompts = [TokensPrompt(prompt_token_ids=list(r.prompt)) for r in chunk]
            outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
            for k, out in enumerate(outputs):
                yield start + k, out.outputs[0].text


def lora_rank(adapter: Path) -> int:
    """vLLM's max_lora_rank for an adapter: the smallest it accepts that holds the adapter's r.
    DoRA adapters are refused: vLLM serves plain LoRA only."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise EngineError(f"{adapter}: a DoRA adapter; vLLM serves plain LoRA only: use --engine transformers, "
                          "or qlcode merge it and serve the merged model")
    r = int(config["r"])
    fits = [x for x in LORA_RANKS if x >= r]
    if not fits:
        raise EngineError(f"{adapter}: LoRA rank {r} is above vLLM's largest ({LORA_RANKS[-1]}): use --engine transformers")
    return fits[0]
