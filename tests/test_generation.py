"""Batched generation across problems: the same answers as batch 1 and as transformers' generate,
each problem's samples its own whatever shares its batch, handed out in order as they finish; the
vLLM engine and GRPO's vLLM key refused where CUDA is missing, and the planner leaving vLLM its share."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from qlcode.execution.benchmarks import Problem, humaneval, python_basics
from qlcode.execution.completions import stops
from qlcode.execution.engines import EngineError, Request, Sampling
from qlcode.execution.engines.batched import TransformersEngine, choose
from qlcode.execution.generate import prompt_ids, sample_raw, seed

from conftest import REPO, make_recipe

CUDA_AND_VLLM = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
NEEDS_VLLM = "needs a CUDA GPU and vLLM (pip install \"qlcode[vllm]\"): vLLM generates on CUDA only"


@pytest.fixture(scope="module")
def micro():
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    return load_model("builtin:micro-codellama", None, Quantization(bits=None))


def requests(tokenizer, problems: list[Problem], n: int = 1) -> list[Request]:
    return [Request(tuple(prompt_ids(p, tokenizer, False)[0].tolist()), tuple(stops(p.prompt)), seed(p, j))
            for p in problems for j in range(n)]


def generate_one_by_one(model, tokenizer, reqs: list[Request], max_new_tokens: int) -> list[str]:
    """transformers' own generate, one prompt at a time, greedy, with the same stop strings."""
    out = []
    for r in reqs:
        ids = torch.tensor([r.prompt])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, stop_strings=list(r.stops), tokenizer=tokenizer)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("bits", [None, 4])
def test_greedy_batched_equals_batch_one_and_transformers_generate(bits, micro):
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    loaded = micro if bits is None else load_model("builtin:micro-codellama", None, Quantization(bits=bits))
    # HumanEval prompts (stopping at the next top-level statement) among one-line answers (stopping at
    # the line's end): rows of different widths and stop strings, ending at different steps
    mixed = [p for pair in zip(humaneval()[:6], python_basics("train")[:6]) for p in pair]
    reqs = requests(loaded.tokenizer, mixed)
    assert len({r.stops for r in reqs}) == 2
    greedy = Sampling(0.0, 40)
    engine = TransformersEngine(loaded.model, loaded.tokenizer, rows=1)
    alone = dict(engine.generate(reqs, greedy))
    engine.rows = 4  # 4 rows at a time: rows leave as they stop and waiting prompts join the batch
    batched = dict(engine.generate(reqs, greedy))
    lengths = {len(loaded.tokenizer(t)["input_ids"]) for t in alone.values()}
    assert len(lengths) > 2  # the rows did stop at different steps
    reference = generate_one_by_one(loaded.model, loaded.tokenizer, reqs, 40)
    # identical text: a prompt's forward runs alone (the numbers of batch 1), and padding a decoding
    # row's cache on the left adds only masked keys, whose softmax weight is exactly 0
    assert [batched[i] for i in range(len(reqs))] == [alone[i] for i in range(len(reqs))] == reference


def test_a_problems_samples_do_not_depend_on_what_shares_its_batch(micro):
    problems = humaneval()[:6]
    hot = Sampling(0.8, 24)
    engine = TransformersEngine(micro.model, micro.tokenizer, rows=1)
    target = requests(micro.tokenizer, problems[2:3], n=3)
    alone = [t for _, t in sorted(engine.generate(target, hot))]
    assert len(set(alone)) > 1  # sampled, not greedy
    for rows, company in ((8, problems), (3, problems[::-1])):
        engine.rows = rows
        mixed = requests(micro.tokenizer, company, n=3)
        out = dict(engine.generate(mixed, hot))
        assert [out[i] for i, r in enumerate(mixed) if r in target] == alone, rows


def test_the_sampler_draws_from_transformers_sampling_distribution(micro):
    """Inverse-CDF sampling after transformers' warpers picks each token with exactly its
    probability; transformers' generate samples its first token from the same probabilities."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    hot = Sampling(1.3, 1)
    ids = micro.tokenizer("def add(a, b):\n    return", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = micro.model(input_ids=ids).logits[:, -1].float()
    scores = logits
    for warp in (TemperatureLogitsWarper(1.3), TopKLogitsWarper(50), TopPLogitsWarper(0.95)):
        scores = warp(ids, scores)
    p = scores.softmax(-1)[0]
    assert 5 < int((p > 0).sum()) <= 50  # a real choice between several tokens, top-k and top-p at work
    # an even grid of M uniforms lands in each token's interval in proportion to its width
    m = 4000
    picked = choose(logits.expand(m, -1), (torch.arange(m) + 0.5) / m, hot)
    freq = torch.bincount(picked, minlength=p.numel()).float() / m
    assert (freq - p).abs().max() <= 2 / m + 1e-5  # grid resolution; float cumsum error is ~1e-7
    assert freq[p == 0].sum() == 0

    torch.manual_seed(0)
    n = 3000
    with torch.no_grad():
        out = micro.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=True,
                                   temperature=1.3, top_p=0.95, num_return_sequences=n, pad_token_id=0)
    theirs = torch.bincount(out[:, -1], minlength=p.numel()).float() / n
    # 5 standard errors per token (a binomial count): a biased sampler fails, chance does not (p < 1e-4)
    assert ((theirs - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1 / n).all()


class Recorder:
    """A real engine whose answers are recorded as they come out (to see what was generated when)."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine, self.tokenizer, self.rows, self.out = engine, engine.tokenizer, engine.rows, []

    def generate(self, reqs, sampling):
        for i, text in self.engine.generate(reqs, sampling):
            self.out.append(i)
            yield i, text


def test_problems_come_out_in_order_as_soon_as_their_samples_are_written(micro):
    problems = python_basics("train")[:12]
    engine = Recorder(TransformersEngine(micro.model, micro.tokenizer, rows=4))
    samples = sample_raw(engine, problems, False, 2, 1.0, 16)
    first, texts = next(samples)
    assert first is problems[0] and len(texts) == 2
    # the first problem was handed out while most of the others were not yet generated
    assert {0, 1} <= set(engine.out) and len(engine.out) < 12 * 2
    rest = list(samples)
    assert [p for p, _ in rest] == problems[1:] and all(len(t) == 2 for _, t in rest)
    # the same samples as each problem sampled alone: seeds are per problem and sample
    alone = TransformersEngine(micro.model, micro.tokenizer, rows=1)
    for p, t in [(first, texts), *rest][::5]:
        assert next(sample_raw(alone, [p], False, 2, 1.0, 16))[1] == t


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlcode.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_vllm_without_cuda_is_a_one_line_error(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"task_id": "a", "prompt": "x = ", "test": "assert x"}\n')
    for args in (["eval", "--bench", "python-basics", "--model", "builtin:micro-codellama"],
                 ["pairs", "--problems", str(problems), "--model", "builtin:micro-codellama", "--out", str(tmp_path / "o.jsonl")]):
        res = cli(*args, "--engine", "vllm")
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip() == ("error: --engine vllm needs a CUDA GPU (vLLM generates on CUDA only); "
                                      "on this machine use the transformers engine (the default)")
    res = cli("eval", "--bench", "python-basics", "--model", "builtin:micro-codellama", "--engine", "tgi")
    assert res.returncode == 2 and res.stderr.strip() == "error: --engine: transformers or vllm, not 'tgi'"
    res = cli("eval", "--bench", "python-basics", "--model", "builtin:micro-codellama", "--batch-size", "0")
    assert res.returncode == 2 and res.stderr.strip() == "error: --batch-size: at least 1 row, not 0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_grpo_vllm_key_without_cuda_is_refused_before_training(tmp_path, tiny_base):
    from qlcode.methods.grpo import METHOD

    data = tmp_path / "problems.jsonl"
    data.write_text('{"prompt": "x = ", "test": "assert x"}\n')
    recipe = make_recipe(tmp_path, tiny_base, data, fmt="problems", train={"method": "grpo", "micro_batch_size": 8,
                                                                           "grpo": {"vllm": True}})
    with pytest.raises(EngineError) as e:
        METHOD.config(recipe, {"output_dir": str(tmp_path / "out"), "use_cpu": True}, conversational=False)
    assert str(e.value) == ("train.grpo.vllm needs a CUDA GPU (vLLM generates on CUDA only); "
                            "on this machine use the transformers engine (the default)")


def test_the_plan_leaves_vllm_its_share_of_the_gpu(tmp_path, tiny_base):
    from qlcode.plan import GiB, fits, plan_recipe
    from qlcode.plan.report import verdict

    data = tmp_path / "problems.jsonl"
    data.write_text('{"prompt": "x = ", "test": "assert x"}\n')
    plain = make_recipe(tmp_path / "a", tiny_base, data, fmt="problems", train={"method": "grpo", "micro_batch_size": 8})
    served = make_recipe(tmp_path / "b", tiny_base, data, fmt="problems",
                         train={"method": "grpo", "micro_batch_size": 8, "grpo": {"vllm": True, "vllm_gpu_memory_utilization": 0.4}})
    p, q = plan_recipe(plain), plan_recipe(served)
    assert p.total == q.total and q.settings.vllm_share == 0.4  # training's own parts do not change
    # a GPU that holds the run alone, but not beside vLLM's 40%
    gpu = int(p.total / 0.8)
    assert fits(p, gpu) and not fits(q, gpu)
    assert fits(q, int(p.total / 0.55))
    assert "besides vLLM's 40% for generation" in verdict(q, gpu, "test GPU") and "does not fit" in verdict(q, gpu, "test GPU")
    assert f"{gpu / GiB:.2f} GiB" in verdict(q, gpu, "test GPU")


@pytest.mark.skipif(not CUDA_AND_VLLM, reason=NEEDS_VLLM)
def test_vllm_greedy_answers_match_transformers_on_the_micro_model():
    """Both engines greedy on the same token ids, the base in full precision on the GPU; kernels
    differ (vLLM's attention and matmuls), so near-ties may flip a token: each answer is compared up
    to its first differing token, and most must agree whole."""
    from qlcode.execution.engines.served import VllmEngine
    from qlcode.inference import load_model
    from qlcode.models import Quantization, load_tokenizer

    problems = humaneval()[:16]
    loaded = load_model("builtin:micro-codellama", None, Quantization(bits=None))
    reqs = requests(loaded.tokenizer, problems)
    greedy = Sampling(0.0, 48)
    ours = dict(TransformersEngine(loaded.model, loaded.tokenizer).generate(reqs, greedy))
    del loaded
    torch.cuda.empty_cache()
    served = VllmEngine("builtin:micro-codellama", load_tokenizer("builtin:micro-codellama"), None, None)
    theirs = dict(served.generate(reqs, greedy))
    same = sum(ours[i] == theirs[i] for i in range(len(reqs)))
    assert same >= 12, [(ours[i], theirs[i]) for i in range(len(reqs)) if ours[i] != theirs[i]]


def test_the_generation_benchmark_runs_and_tables_every_way():
    res = subprocess.run([sys.executable, "benchmarks/generation.py", "--limit", "2", "--max-new-tokens", "8", "--rounds", "1",
                          "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in res.stdout.splitlines() if line.startswith("| pass@")]
    assert [(r[0], r[2]) for r in rows] == [(mode, way) for mode in ("pass@1", "pass@10") for way in
                                           ("one generate per problem (before)", "engine, 1 row", "engine, 32 rows")]
    assert all(float(r[3]) > 0 for r in rows) and rows[0][4] == rows[3][4] == "1.00x"
