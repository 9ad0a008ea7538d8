"""The playground's models, and both panes' answers generated at the same time.

One base model is loaded once; adapters trained on it are loaded onto it with PEFT. Two panes on
that base (the base itself or any of its adapters) are one batched `generate`, each row with its
own adapter (PEFT's `adapter_names=`, "__base__" for the bare base), so both panes stream together
at the cost of one model. A merged model directory or another Hub id is a model of its own and
generates in its own thread beside it. Each model serves one generation at a time (its lock).

The pool serves only the models it offers (`choices`): the base, its finished adapters, and the
models named when it was made; any other spec is refused before anything loads, so a request can
neither load an arbitrary folder nor put a made-up name on the leaderboard.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from qlcode.data.fim import fim_ids
from qlcode.errors import QlcodeError
from qlcode.inference import load_model, sampling_args, stop_at_answer_end
from qlcode.models import Quantization, load_tokenizer, quantization_of, use_kernels
from qlcode.recipe import ModelSection
from qlcode.runs import RunDir
from qlcode.ui.prompts import Prompt

MAX_NEW_TOKENS = 1024
SEED_MAX = 2**32 - 1
BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class Settings:
    temperature: float = 0.2
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        """Bad settings are refused with the range they must be in (a seed of 10**30 overflows torch)."""
        if not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise QlcodeError(f"seed must be a whole number from 0 to {SEED_MAX}, got {self.seed}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise QlcodeError(f"max new tokens must be from 1 to {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 2:
            raise QlcodeError(f"temperature must be from 0 to 2, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise QlcodeError(f"top_p must be above 0 and at most 1, got {self.top_p}")

    def sampling(self) -> dict:
        return sampling_args(self.temperature, self.top_p)


SHOWN_WAIT_S = 0.1  # a shorter wait for the model is not worth a mention


@dataclass
class Pane:
    """One pane's answer so far and how fast it came, timed from the request's arrival (queue included)."""

    text: str = ""
    tokens: int = 0
    first_token_s: float | None = None
    queued_s: float | None = None  # from the arrival to the model starting on it
    seconds: float = 0.0
    done: bool = False
    error: str | None = None

    def stats(self) -> str:
        if self.error:
            return "error"
        if self.first_token_s is None:
            return ("waiting for the model" if self.queued_s is None else "waiting for the first token") if not self.done else "no tokens"
        waited = self.queued_s or 0.0
        rate = self.tokens / (self.seconds - waited) if self.seconds > waited else 0.0
        wait = f" ({waited:.2f} s of it waiting for the model)" if waited >= SHOWN_WAIT_S else ""
        return ("" if self.done else "generating · ") + f"first token {self.first_token_s:.2f} s{wait} · {self.tokens} tokens · {rate:.1f} tokens/s"


@dataclass(frozen=True)
class Target:
    """Where a spec generates: its model and tokenizer, the adapter row name (None: not a PEFT model)."""

    model: torch.nn.Module
    tokenizer: object
    adapter: str | None
    lock: threading.Lock


class _Stop(StoppingCriteria):
    """Ends a generate when its event is set (the Stop button, or a consumer that went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _RowStreamer(BaseStreamer):
    """Receives each step's tokens of a batch and reports every row's text to the event queue."""

    def __init__(self, tokenizer, panes: list[int], stops: set[int], events: queue.Queue, start: float):
        self.tokenizer, self.panes, self.stops, self.events, self.start = tokenizer, panes, stops, events, start
        self.ids: list[list[int]] = [[] for _ in panes]
        self.finished = [False] * len(panes)
        self.prompt_seen = False
        self.anchors: list[list[int]] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompt: keep each row's last token
            self.prompt_seen = True
            self.anchors = value[:, -1:].tolist()
            return
        now = time.perf_counter() - self.start
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            if token in self.stops:
                self.finished[row] = True
                self.events.put((self.panes[row], "done", now))
                continue
            self.ids[row].append(token)
            text = self._text(row)
            self.events.put((self.panes[row], "token", (text, len(self.ids[row]), now)))

    def _text(self, row: int) -> str:
        """The row's new text, decoded after the prompt's last token: decoding new tokens alone would
        drop the leading space SentencePiece folds into a word's first piece."""
        anchor = self.anchors[row]
        return self.tokenizer.decode(anchor + self.ids[row], skip_special_tokens=True)[
            len(self.tokenizer.decode(anchor, skip_special_tokens=True)):]

    def end(self) -> None:
        now = time.perf_counter() - self.start
        for row, pane in enumerate(self.panes):
            if not self.finished[row]:
                self.events.put((pane, "done", now))


class Pool:
    """Models by spec: 'base', 'adapter:NAME' (adapters/NAME on the shared base), or a directory / Hub id."""

    def __init__(self, base: str = "builtin:micro-codellama", bits: int | None = 4, adapters: Path = Path("adapters"),
                 models: tuple[str, ...] = ()):
        self.base, self.quant, self.adapters = base, Quantization(bits=bits), Path(adapters)
        self.models = tuple(models)  # offered beside the base and its adapters: merged directories, Hub ids
        self.model = self.tokenizer = None
        self.loaded: set[str] = set()
        self.others: dict[str, tuple] = {}
        self.locks: dict[str, threading.Lock] = {BASE: threading.Lock()}
        self._load(BASE)

    def _load(self, spec: str) -> None:
        """Every model load of the playground, in one place (qlcode.inference, so each loads as it was
        trained): the shared base, an adapter onto it, or a model of its own beside it (a merged
        directory, a Hub id, or an adapter trained on another base or quantization)."""
        from peft import PeftModel

        if spec.startswith("adapter:") and self.shares_base(spec):
            name = spec.removeprefix("adapter:")
            path = str(self.adapters / name)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            use_kernels(self.model.eval(), self.quant)  # the new adapter's layers too (Triton on a GPU)
            self.loaded.add(name)
            return
        if spec.startswith("adapter:"):
            loaded = load_model(adapter=self._run(spec).path)
        else:
            loaded = load_model(self.base if spec == BASE else spec, quant=self.quant)
            loaded.tokenizer = load_tokenizer(loaded.base, template="instruct")  # the base family's chat format
            stop_at_answer_end(loaded.model, loaded.tokenizer)
        if spec == BASE:
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
        else:
            self.others[spec] = loaded.model, loaded.tokenizer
            self.locks[spec] = threading.Lock()

    def _run(self, spec: str) -> RunDir:
        run = RunDir(self.adapters / spec.removeprefix("adapter:"))
        if not run.finished:
            raise QlcodeError(f"no finished adapter at {run.path} (run qlcode train, or pick one of: {', '.join(self.choices())})")
        return run

    def shares_base(self, spec: str) -> bool:
        """Whether an adapter was trained on exactly the shared base: same weights, quantization and model options."""
        recipe = self._run(spec).recipe()
        same_quant = quantization_of(recipe) == Quantization(**{**self.quant.__dict__, "kernels": recipe.quant.kernels})
        defaults = ModelSection(base=self.base).model_dump(exclude={"base"})
        return recipe.model.base == self.base and same_quant and recipe.model.model_dump(exclude={"base"}) == defaults

    def choices(self) -> list[str]:
        from qlcode.runs import list_runs

        offered = [BASE, *(f"adapter:{r.name}" for r in list_runs(self.adapters) if r.status == "finished" and r.base == self.base)]
        return offered + [m for m in self.models if m not in offered]

    def target(self, spec: str) -> Target:
        """The model a spec generates with, loading it the first time; a spec the pool does not offer is refused."""
        from peft import PeftModel

        choices = self.choices()
        if spec not in choices:
            shown = spec if len(spec) <= 80 else spec[:80] + f"... ({len(spec):,} characters)"
            raise QlcodeError(f"{shown!r} is not a model of this playground; pick one of: {', '.join(choices)}")
        if spec == BASE or spec.startswith("adapter:") and self.shares_base(spec):
            with self.locks[BASE]:  # loading an adapter changes the shared model
                name = spec.removeprefix("adapter:")
                if spec != BASE and name not in self.loaded:
                    self._load(spec)
                peft = isinstance(self.model, PeftModel)
                return Target(self.model, self.tokenizer, (PEFT_BASE if spec == BASE else name) if peft else None, self.locks[BASE])
        if spec not in self.others:
            self._load(spec)
        model, tokenizer = self.others[spec]
        return Target(model, tokenizer, None, self.locks[spec])

    def laid_out(self, spec: str, prompt: Prompt) -> str:
        """The prompt as the spec's tokenizer laid it out, special tokens included (infill: <PRE> ... <MID>), without <s>."""
        tok = self.target(spec).tokenizer
        return tok.decode(prompt.ids(tok), skip_special_tokens=False).removeprefix(tok.bos_token or "")

    def stream(self, specs: list[str], prompts: list[Prompt], settings: Settings, since: float | None = None,
               stop: threading.Event | None = None) -> Iterator[list[Pane]]:
        """Every pane's answer so far, after each new token of any pane; a pane that fails shows its
        error and the others go on. Times count from `since` (a time.perf_counter() value: when the
        request arrived; default now); setting `stop` ends the generation where it is, as does
        closing this iterator."""
        since = time.perf_counter() if since is None else since
        stop = stop or threading.Event()
        panes = [Pane() for _ in specs]
        groups: dict[int, list[int]] = {}
        targets: dict[int, Target] = {}
        # adapters first: loading the first one wraps the shared base, which the base's rows must then use
        for i, spec in sorted(enumerate(specs), key=lambda item: not item[1].startswith("adapter:")):
            try:
                targets[i] = self.target(spec)
                groups.setdefault(id(targets[i].model), []).append(i)
            except Exception as e:  # shown in the pane; the app keeps serving
                panes[i].error, panes[i].done = f"{type(e).__name__}: {e}", True
        events: queue.Queue = queue.Queue()
        workers = [threading.Thread(target=self._generate, args=(rows, targets, prompts, settings, events, since, stop), daemon=True)
                   for rows in groups.values()]
        for w in workers:
            w.start()
        try:
            yield panes
            while not all(p.done for p in panes):
                pane, kind, payload = events.get()
                p = panes[pane]
                if kind == "token":
                    p.text, p.tokens, p.seconds = payload
                    p.first_token_s = p.seconds if p.first_token_s is None else p.first_token_s
                elif kind == "start":
                    p.queued_s = payload
                elif kind == "error":
                    p.error, p.done = payload, True
                else:
                    p.seconds, p.done = max(p.seconds, payload), True
                yield panes
        finally:
            if not all(p.done for p in panes):  # the consumer stopped listening (a cancelled request): stop generating
                stop.set()
        for w in workers:
            w.join()

    @staticmethod
    def _generate(rows: list[int], targets: dict[int, Target], prompts: list[Prompt], settings: Settings,
                  events: queue.Queue, since: float, stop: threading.Event) -> None:
        """One batched generate for the panes that share a model (left-padded, one adapter per row)."""
        first = targets[rows[0]]
        tok = first.tokenizer
        try:
            ids = [prompts[r].ids(tok) for r in rows]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids], device=first.model.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=first.model.device)
            stops = {tok.eos_token_id} | ({fim_ids(tok).eot} if any(prompts[r].mode == "infill" for r in rows) else set())
            adapters = {} if first.adapter is None else {"adapter_names": [targets[r].adapter for r in rows]}
            with first.lock, torch.no_grad():
                for r in rows:
                    events.put((r, "start", time.perf_counter() - since))
                streamer = _RowStreamer(tok, rows, stops, events, since)
                torch.manual_seed(settings.seed)
                first.model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer,
                                     max_new_tokens=settings.max_new_tokens, eos_token_id=sorted(stops),
                                     pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
                                     **adapters, **settings.sampling())
        except Exception as e:  # every pane of this batch shows it
            for r in rows:
                events.put((r, "error", f"{type(e).__name__}: {e}"))
