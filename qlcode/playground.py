"""The side-by-side playground's logic (app/playground.py is only its UI).

One base model is loaded once; adapters trained on it are loaded onto it with PEFT and switched
per request, so two panes cost one base plus the adapters. A merged model directory or another
Hub id is a second model of its own. Requests are served one at a time (the active adapter is
model-wide state). Modes: chat (Code Llama Instruct, multi-turn), complete (raw), infill
(<PRE> <SUF> <MID>). Votes become preference rows a DPO recipe loads; code runs only in the sandbox.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TextIteratorStreamer

from qlcode.data.fim import fim_ids, infill_prompt
from qlcode.errors import QlcodeError
from qlcode.execution.completions import extract_code
from qlcode.execution.sandbox import Limits, Result, run
from qlcode.models import load_base, load_tokenizer, use_kernels
from qlcode.recipe import ModelSection, QuantSection, read_run_recipe

MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 1024
BASE = "base"


@dataclass
class Settings:
    temperature: float = 0.2
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


class Pool:
    """Models by spec: 'base', 'adapter:NAME' (adapters/NAME on the shared base), or a directory / Hub id."""

    def __init__(self, base: str = "builtin:micro-codellama", bits: int | None = 4, adapters: Path = Path("adapters")):
        self.base, self.quant, self.adapters = base, QuantSection(bits=bits), adapters
        self.model = self._load(base)
        self.tokenizer = load_tokenizer(ModelSection(base=base), "codellama-instruct")
        self.loaded: list[str] = []
        self.others: dict[str, tuple] = {}
        self.lock = threading.Lock()

    def _load(self, spec: str):
        return use_kernels(load_base(ModelSection(base=spec), self.quant), self.quant).eval()

    def choices(self) -> list[str]:
        names = []
        if self.adapters.is_dir():
            for d in sorted(self.adapters.iterdir()):
                if (d / "adapter_model.safetensors").is_file() and (d / "recipe.yaml").is_file():
                    if read_run_recipe(d / "recipe.yaml").model.base == self.base:
                        names.append(f"adapter:{d.name}")
        return [BASE, *names]

    def _adapter(self, name: str):
        from peft import PeftModel

        path = self.adapters / name
        if not (path / "adapter_model.safetensors").is_file():
            raise QlcodeError(f"no finished adapter at {path}")
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
        elif name not in self.loaded:
            self.model.load_adapter(str(path), adapter_name=name)
        if name not in self.loaded:
            self.loaded.append(name)
            use_kernels(self.model, self.quant)  # the new adapter's layers too (Triton on a GPU)
        self.model.set_adapter(name)
        return self.model

    def select(self, spec: str):
        """(model, tokenizer, context) for a spec; the context disables adapters for the base."""
        if spec == BASE:
            return self.model, self.tokenizer, (self.model.disable_adapter() if self.loaded else nullcontext())
        if spec.startswith("adapter:"):
            return self._adapter(spec.removeprefix("adapter:")), self.tokenizer, nullcontext()
        if spec not in self.others:
            self.others[spec] = (self._load(spec), load_tokenizer(ModelSection(base=spec), "codellama-instruct"))
        model, tok = self.others[spec]
        return model, tok, nullcontext()

    def prompt_ids(self, tok, mode: str, text: str, history: list[tuple[str, str]], prefix: str, suffix: str) -> list[int]:
        if mode == "infill":
            return infill_prompt(tok, fim_ids(tok), prefix[-MAX_PROMPT_CHARS:], suffix[:MAX_PROMPT_CHARS])
        if mode == "chat":
            messages = [m for user, answer in history for m in ({"role": "user", "content": user},
                                                               {"role": "assistant", "content": answer})]
            messages.append({"role": "user", "content": text[-MAX_PROMPT_CHARS:]})
            return tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return tok(text[-MAX_PROMPT_CHARS:])["input_ids"]

    def stream(self, spec: str, mode: str, text: str = "", settings: Settings = Settings(),
               history: list[tuple[str, str]] = (), prefix: str = "", suffix: str = "") -> Iterator[str]:
        """The answer so far, after each new piece of text."""
        with self.lock:
            model, tok, context = self.select(spec)
            ids = torch.tensor([self.prompt_ids(tok, mode, text, list(history), prefix, suffix)], device=model.device)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            stop = [tok.eos_token_id] + ([fim_ids(tok).eot] if mode == "infill" else [])
            sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
                        if settings.temperature > 0 else {"do_sample": False})
            torch.manual_seed(settings.seed)
            failure: list[BaseException] = []

            def generate():
                try:
                    with context, torch.no_grad():
                        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                       max_new_tokens=min(settings.max_new_tokens, MAX_NEW_TOKENS),
                                       eos_token_id=stop, pad_token_id=tok.pad_token_id, **sampling)
                except BaseException as e:  # shown in the pane by the caller
                    failure.append(e)
                    streamer.end()

            worker = threading.Thread(target=generate)
            worker.start()
            text_so_far = ""
            for piece in streamer:
                text_so_far += piece
                yield text_so_far
            worker.join()
            if failure:
                raise failure[0]
            yield text_so_far


def run_answer(answer: str, asserts: str, limits: Limits = Limits(timeout_s=10, cpu_s=10)) -> Result:
    """Run the code of an answer (a fenced block if there is one) followed by the user's asserts, in the sandbox."""
    return run(extract_code(answer) + "\n" + asserts + "\n", limits)


def record_vote(path: Path, prompt: str, left: tuple[str, str], right: tuple[str, str], choice: str) -> dict:
    """Append the judgement: left/right -> a preference row (prompt, chosen, rejected, the models);
    tie -> a row in PATH.ties.jsonl (kept, but no pair to train on)."""
    if choice not in ("left", "right", "tie"):
        raise QlcodeError(f"a vote is left, right or tie, not {choice!r}")
    (l_model, l_text), (r_model, r_text) = left, right
    if choice == "tie":
        row, path = {"prompt": prompt, "answers": [l_text, r_text], "models": [l_model, r_model]}, path.with_suffix(".ties.jsonl")
    else:
        (c_model, chosen), (j_model, rejected) = (left, right) if choice == "left" else (right, left)
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_model": c_model, "rejected_model": j_model}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:  # one line per write: a crash leaves whole rows
        f.write(json.dumps(row) + "\n")
    return row
