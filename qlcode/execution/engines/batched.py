"""The transformers engine: many requests decoding together in one left-padded KV cache.

Continuous batching: each prompt's forward pass runs alone (no padding, the exact numbers of
batch 1, once for all the samples that share it), then its rows join the decoding batch, padded
on the left; a row that stops leaves the batch and its cache, and a waiting request takes its
place. Each row stops at eos or at its own stop strings (transformers' StopStringCriteria, the
check `generate(stop_strings=...)` runs).

Each row samples from its own random stream: uniforms drawn from a CPU generator seeded by the
request, one per step, turned into a token by inverting the cumulative distribution left by
transformers' own temperature, top-k and top-p warpers. A row's draws therefore do not depend on
which rows share its batch, or when it joined.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
from transformers import Cache, DynamicCache, StopStringCriteria
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from qlcode.execution.engines import Request, Sampling

CPU_ROWS = 32  # on CPUs more rows stop paying: a forward's time grows with the rows past about this
MAX_ROWS = 256
KV_SHARE = 0.5  # of free GPU memory, for the batch's KV cache and activations


class TransformersEngine:
    def __init__(self, model, tokenizer, rows: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.rows = rows or auto_rows(model)
        eos = model.generation_config.eos_token_id
        self.eos = torch.tensor(sorted({eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])))
        self._criteria: dict[tuple[str, ...], StopStringCriteria] = {}

    def base_only(self) -> AbstractContextManager:
        """The base without its adapter (a PEFT model's adapter switched off), for --compare."""
        return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()

    def generate(self, requests: list[Request], sampling: Sampling) -> Iterator[tuple[int, str]]:
        """(request index, answer) as each request ends."""
        for i, tokens in decode(self.model, requests, sampling, self.eos, self._stopper, self.rows):
            yield i, self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _stopper(self, stops: tuple[str, ...]) -> StopStringCriteria:
        if stops not in self._criteria:  # building one embeds every vocabulary entry: once per stop set
            self._criteria[stops] = StopStringCriteria(self.tokenizer, list(stops))
        return self._criteria[stops]


def auto_rows(model, tokens: int = 1024) -> int:
    """Rows decoding at once: on a GPU, what half its free memory holds of KV cache and activations
    for `tokens` per row (an estimate: the prompt's activations are the largest transient); on a
    CPU, CPU_ROWS."""
    if model.device.type != "cuda":
        return CPU_ROWS
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    width = 2  # bf16/fp16 activations and cache
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * width
    activations = (4 * c.hidden_size + 3 * c.intermediate_size) * width
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(1, min(MAX_ROWS, int(KV_SHARE * free / (tokens * (kv + activations)))))


def choose(logits: torch.Tensor, uniforms: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The next token of each row: argmax when greedy, else the token whose interval of the warped
    distribution's cumulative sum holds the row's uniform draw (inverse-CDF sampling)."""
    if s.temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float()
    for warp in (TemperatureLogitsWarper(s.temperature), TopKLogitsWarper(s.top_k), TopPLogitsWarper(s.top_p)):
        scores = warp(None, scores)
    cdf = scores.softmax(-1).cumsum(-1)
    # side="right": a token of probability 0 has an empty interval and is never chosen
    picked = torch.searchsorted(cdf, (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1), side="right").squeeze(-1)
    return picked.clamp_max(cdf.shape[-1] - 1)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room to spare: a new token is
    written in place. DynamicLayer concatenates, copying the whole cache at every step, which for
    a batch of long prompts costs twice the attention itself."""

    ROOM = 64  # tokens of spare room a new buffer gets; a full buffer doubles

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer, self.value_buffer = key_states[:, :, :0], value_states[:, :, :0]
        length, n = self.get_seq_length(), key_states.shape[-2]
        if length + n > self.key_buffer.shape[-2]:
            room = max(2 * self.key_buffer.shape[-2], length + n + self.ROOM)
            self.key_buffer, self.value_buffer = (torch.cat([b[:, :, :length], b.new_empty(*b.shape[:2], room - length, b.shape[3])], dim=2)
                                                  for b in (self.key_buffer, self.value_buffer))
        self.key_buffer[:, :, length:length + n] = key_states
        self.value_buffer[:, :, length:length + n] = value_states
        self.keys, self.values = self.key_buffer[:, :, :length + n], self.value_buffer[:, :, :length + n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            length = self.get_seq_length()
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with zeros before its entries along `dim`, up to `width`."""
    return torch.nn.functional.pad(t, [0, 0] * (t.dim() - 1 - dim) + [width - t.shape[dim], 0])


def run_alone(model, prompt: tuple[int, ...]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """A prompt's forward pass by itself: its KV cache (keys, values per layer) and last logits."""
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([prompt], device=model.device)
    logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    return [(k, v) for k, v, *_ in cache], logits


class Rows:
    """The rows decoding together: one left-padded KV cache and its attention mask, and per row its
    request, tokens so far (for the stop strings), last position, step and next-token logits."""

    def __init__(self, model) -> None:
        self.model = model
        self.requests: list[int] = []
        self.cache: Cache | None = None
        self.mask = self.ids = self.last = self.steps = self.logits = None

    def __len__(self) -> int:
        return len(self.requests)

    def join(self, joining: list[tuple[int, tuple[int, ...], list, torch.Tensor]]) -> None:
        """Add rows (request, prompt, its cache, its logits) padded on the left to one width; the
        columns that no row uses any more are dropped."""
        device = self.model.device
        had = self.cache is not None
        caches = ([[(layer.keys, layer.values) for layer in self.cache.layers]] if had else []) + [kv for _, _, kv, _ in joining]
        masks = ([self.mask] if had else []) + [torch.ones(1, len(p), dtype=torch.long, device=device) for _, p, _, _ in joining]
        ids = ([self.ids] if had else []) + [torch.tensor([p], device=device) for _, p, _, _ in joining]
        width = max(m.shape[1] for m in masks)
        mask = torch.cat([_left_pad(m, width, 1) for m in masks])
        unused = int(mask.any(0).long().argmax())  # leading columns that are padding in every row
        self.mask = mask[:, unused:]
        self.cache = Cache(layer_class_to_replicate=GrowingLayer)
        for layer in range(len(caches[0])):
            keys = torch.cat([_left_pad(c[layer][0], width, 2) for c in caches])[:, :, unused:]
            values = torch.cat([_left_pad(c[layer][1], width, 2) for c in caches])[:, :, unused:]
            self.cache.update(keys, values, layer)
        id_width = max(x.shape[1] for x in ids)
        self.ids = torch.cat([_left_pad(x, id_width, 1) for x in ids])
        last = torch.tensor([len(p) - 1 for _, p, _, _ in joining], device=device)
        steps = torch.zeros(len(joining), dtype=torch.long, device=device)
        logits = torch.cat([x for _, _, _, x in joining])
        if had:
            last, steps, logits = torch.cat([self.last, last]), torch.cat([self.steps, steps]), torch.cat([self.logits, logits])
        self.last, self.steps, self.logits = last, steps, logits
        self.requests += [i for i, *_ in joining]

    def keep(self, kept: torch.Tensor) -> None:
        """Only the rows at these indices stay (in the cache too)."""
        self.cache.batch_select_indices(kept)
        self.mask, self.ids, self.last, self.steps, self.logits = (x[kept] for x in (self.mask, self.ids, self.last, self.steps, self.logits))
        self.requests = [self.requests[i] for i in kept.tolist()]

    def forward(self, tokens: torch.Tensor) -> None:
        """Feed each row its newest token: the next logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        self.last = self.last + 1
        self.logits = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.last[:, None],
                                 cache=self.cache, use_cache=True).logits[:, -1]


@torch.no_grad()
def decode(model, requests: list[Request], s: Sampling, eos: torch.Tensor, stopper, capacity: int) -> Iterator[tuple[int, list[int]]]:
    """(request index, its new tokens up to and including the one that ended it), as each ends."""
    device = model.device
    eos = eos.to(device)
    stop_sets = sorted({r.stops for r in requests if r.stops})
    has_set = {st: torch.tensor([r.stops == st for r in requests], device=device) for st in stop_sets}
    waiting, uses, prefilled = deque(range(len(requests))), Counter(r.prompt for r in requests), {}
    uniforms: dict[int, torch.Tensor] = {}
    written: dict[int, list[int]] = {}
    rows = Rows(model)
    while waiting or len(rows):
        # rows join in groups (a quarter of the batch, or all that wait): each join copies the cache once
        if waiting and capacity - len(rows) >= min(len(waiting), max(1, capacity // 4)):
            joining = []
            for _ in range(min(capacity - len(rows), len(waiting))):
                i = waiting.popleft()
                prompt = requests[i].prompt
                if prompt not in prefilled:
                    prefilled[prompt] = run_alone(model, prompt)
                joining.append((i, prompt, *prefilled[prompt]))
                uses[prompt] -= 1
                if not uses[prompt]:  # the prompt's last sample: its cache now lives in the batch
                    del prefilled[prompt]
                uniforms[i] = torch.rand(s.max_new_tokens, generator=torch.Generator().manual_seed(requests[i].seed))
                written[i] = []
            rows.join(joining)
        draws = torch.stack([uniforms[i][step] for i, step in zip(rows.requests, rows.steps.tolist())])
        token = choose(rows.logits, draws, s)
        for i, t in zip(rows.requests, token.tolist()):
            written[i].append(t)
        rows.ids = torch.cat([rows.ids, token[:, None]], dim=1)
        rows.steps = rows.steps + 1
        which = torch.tensor(rows.requests, device=device)
        done = torch.isin(token, eos) | (rows.steps == s.max_new_tokens)
        for st in stop_sets:
            done |= stopper(st)(rows.ids, None) & has_set[st][which]
        for i in which[done].tolist():
            del uniforms[i]
            yield i, written.pop(i)
        if done.any():
            kept = (~done).nonzero().squeeze(-1)
            rows.keep(kept)
            token = token[kept]
        if len(rows):
            rows.forward(token)
