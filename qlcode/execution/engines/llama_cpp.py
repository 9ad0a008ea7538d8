"""llama.cpp as a generation engine: completions from an exported GGUF file, for `qlcode eval --gguf`.

What a user runs after export (llama.cpp, Ollama) is the quantized file, not the adapter: this
measures pass@k on exactly that file. Prompts are those of qlcode.execution.generate, rendered
with the chat template the GGUF carries for Instruct models, tokenized by llama.cpp itself (as
Ollama and llama-server do), and the answers are finished (cut, code extracted) the same way.
Samples are seeded per problem and sample index, like the transformers path, so a rerun repeats.

llama.cpp's CPU "extra buffer types" (weights repacked for AMX/AVX-512 kernels) are turned off:
with them, llama-cpp-python 0.3.36 built on this project's CPU (AMX_INT8, AVX512_BF16) died with
SIGSEGV evaluating any quantized file (q8_0, q4_k_m, q5_k_m); f16 was unaffected.
"""

from __future__ import annotations

import importlib.util
import zlib
from contextlib import contextmanager
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.execution.benchmarks import Problem
from qlcode.execution.completions import INSTRUCT_ASK, stops
from qlcode.execution.generate import finish

CONTEXT = 4096  # tokens of prompt + answer: HumanEval's longest prompt and 384 new tokens fit


def llama_cpp_problem() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "--gguf runs the file with llama.cpp: pip install 'qlcode[llama-cpp]' (it builds llama.cpp, minutes)"
    return None


@contextmanager
def _no_extra_buffers():
    """Llama() takes its model parameters from llama_model_default_params(): these, with use_extra_bufts off."""
    import llama_cpp
    import llama_cpp.llama as high_level

    defaults = llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = False
        return p

    high_level.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = defaults


def load_gguf(path: Path, **options):
    """llama_cpp.Llama on the file (options: Llama's own), quietly, with the extra buffer types off."""
    import llama_cpp

    if not path.is_file():
        raise QlcodeError(f"--gguf: no such file {str(path)!r} (qlcode export MODEL --type TYPE writes one)")
    with _no_extra_buffers():
        try:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **options)
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise QlcodeError(f"--gguf: llama.cpp cannot load {path} ({e}); is it a GGUF file written by qlcode export?") from None


class LlamaCppEngine:
    """A GGUF file loaded by llama.cpp, answering benchmark problems."""

    def __init__(self, path: str | Path, threads: int | None = None, context: int = CONTEXT) -> None:
        if (problem := llama_cpp_problem()) is not None:
            raise QlcodeError(problem)
        self.path = Path(path)
        self.llm = load_gguf(self.path, n_ctx=context, n_threads=threads)

    def token_text(self, key: str) -> str:
        """The text of a special token the file names (tokenizer.ggml.KEY_token_id)."""
        return self.llm.tokenizer_.detokenize([int(self.llm.metadata[f"tokenizer.ggml.{key}_token_id"])], special=True).decode()

    def is_instruct(self) -> bool:
        """As qlcode.families decides from a tokenizer: the family's Instruct eos where it has one, else a
        chat template other than qlcode's training copy (a base trained in it, like the micro model, is no
        Instruct model). The family: the one of the file's architecture whose tokens its vocabulary has."""
        from qlcode.families import DEFAULT, FAMILIES

        meta = self.llm.metadata
        vocab = {self.llm.tokenizer_.detokenize([i], special=True).decode(errors="replace") for i in range(self.llm.n_vocab())}
        family = next((f for f in FAMILIES.values() if f.gguf.architecture == meta.get("general.architecture")
                       and all(t in vocab for t in f.markers)), DEFAULT)
        if family.turn_end is not None:
            return self.token_text("eos") == family.turn_end
        template = meta.get("tokenizer.chat_template")
        return template is not None and template != family.chat_template

    def prompt_tokens(self, problem: Problem, instruct: bool) -> list[int]:
        """The prompt as qlcode.execution.generate words it, in llama.cpp's tokens (bos first)."""
        if not instruct:
            return self.llm.tokenize(problem.prompt.encode(), add_bos=True, special=False)
        from transformers.utils.chat_template_utils import render_jinja_template

        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if template is None:
            raise QlcodeError(f"--gguf: {self.path} carries no chat template, so it cannot be prompted as an Instruct model")
        text = render_jinja_template([[{"role": "user", "content": INSTRUCT_ASK + problem.prompt}]], chat_template=template,
                                     bos_token=self.token_text("bos"), eos_token=self.token_text("eos"),
                                     add_generation_prompt=True)[0][0]
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)  # the template writes <s> itself

    def sample_raw(self, problem: Problem, instruct: bool, n: int, temperature: float, max_new_tokens: int) -> list[str]:
        """n answers as the model wrote them: greedy at temperature 0, else nucleus sampling as the transformers path."""
        tokens = self.prompt_tokens(problem, instruct)
        seed = zlib.crc32(problem.task_id.encode())
        answers = []
        for i in range(n):
            self.llm.reset()
            out = self.llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=temperature, top_p=0.95, top_k=50,
                                             min_p=0.0, repeat_penalty=1.0, seed=seed + i,
                                             stop=None if instruct else stops(problem.prompt))
            answers.append(out["choices"][0]["text"])
        return answers

    def sample(self, problem: Problem, instruct: bool, n: int, temperature: float, max_new_tokens: int = 384) -> list[str]:
        """n completions, ready for Problem.program."""
        return [finish(problem, t, instruct) for t in self.sample_raw(problem, instruct, n, temperature, max_new_tokens)]
