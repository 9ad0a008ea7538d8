"""Which engine a command runs: `--engine transformers` (the default) or `--engine vllm`."""

from __future__ import annotations

from qlcode.execution.engines import ENGINES, Engine, EngineError, require_vllm


def open_engine(name: str, model: str | None, adapter: str | None, quant, rows: int | None = None) -> tuple[Engine, bool]:
    """The engine `qlcode eval/pairs --engine NAME` asks for, on a base and/or adapter, and whether
    to prompt it as an Instruct model. vLLM is refused before anything loads where it cannot run."""
    if name not in ENGINES:
        raise EngineError(f"--engine: {' or '.join(ENGINES)}, not {name!r}")
    if rows is not None and rows < 1:
        raise EngineError(f"--batch-size: at least 1 row, not {rows}")
    if name == "vllm":
        require_vllm("--engine vllm")
        from qlcode.execution.engines.served import VllmEngine

        return VllmEngine.open(model, adapter, quant, rows)
    from qlcode.execution.engines.batched import TransformersEngine
    from qlcode.inference import load_model

    loaded = load_model(model, adapter, quant)
    return TransformersEngine(loaded.model, loaded.tokenizer, rows), loaded.instruct
