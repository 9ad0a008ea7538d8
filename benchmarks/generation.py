"""Generation speed: samples per second, one problem per generate call against the batched engine.

    python benchmarks/generation.py --threads 1            # CPU: micro model, HumanEval pass@1 and pass@10
    python benchmarks/generation.py --gpu                  # GPU: CodeLlama-7B architecture, random weights

CPU: the micro model (full precision) on the first --limit HumanEval problems, sampled as `qlcode
eval` samples them: pass@1 with 1 greedy sample, pass@10 with 10 at temperature 0.8. Three ways,
run alternately in each of --rounds rounds (the machine is shared: a slow spell hits all three):
"one generate per problem" is qlcode before the engine (transformers' generate, the problem's n
samples as num_return_sequences), "engine, 1 row" the batched engine one request at a time, and
"engine, batched" the same with --batch-size rows. With --execute, the samples of the first round
run in the sandbox and pass@k is reported for the first and last ways (the same answers within
sampling noise; the seeds differ, so the samples do).

GPU (--gpu): CodeLlama-7B's architecture with random weights in 4 bits, Code Llama's tokenizer;
every sample writes --new-tokens tokens (random weights: no stop string is ever meant). transformers
batch 1, transformers batched, vLLM (when installed); then GRPO steps per minute (recipes/
quickstart-grpo.yaml on that model) without and with train.grpo.vllm.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import zlib

import harness
import torch

from qlcode.execution.benchmarks import humaneval
from qlcode.execution.completions import stops
from qlcode.execution.engines import Request, Sampling
from qlcode.execution.engines.batched import TransformersEngine
from qlcode.execution.generate import prompt_ids, seed
from qlcode.inference import sampling_args

# samples per problem, temperature: pass@1 greedy (in-training pass@1; every way writes the same
# tokens, so the same work), pass@10 sampled as qlcode eval's usage (the ways' seeds differ, and so
# do their samples' lengths: tokens/s compares them better than samples/s)
MODES = {"pass@1": (1, 0.0), "pass@10": (10, 0.8)}


def one_generate_per_problem(model, tokenizer, problems, n: int, temperature: float, max_new_tokens: int,
                             use_stops: bool = True) -> list[list[str]]:
    """How qlcode sampled before the engine: one `generate` per problem, seeded by its task id."""
    out = []
    for p in problems:
        ids = prompt_ids(p, tokenizer, False).to(model.device)
        torch.manual_seed(zlib.crc32(p.task_id.encode()))
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                             stop_strings=stops(p.prompt) if use_stops else None, tokenizer=tokenizer,
                             **sampling_args(temperature))
        out.append(tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True))
    return out


def with_engine(engine, problems, n: int, temperature: float, max_new_tokens: int, use_stops: bool = True) -> list[list[str]]:
    reqs = [Request(tuple(prompt_ids(p, engine.tokenizer, False)[0].tolist()), tuple(stops(p.prompt)) if use_stops else (),
                    seed(p, j)) for p in problems for j in range(n)]
    answers = dict(engine.generate(reqs, Sampling(temperature, max_new_tokens)))
    return [[answers[i * n + j] for j in range(n)] for i in range(len(problems))]


def timed(fn) -> tuple[float, list[list[str]]]:
    if harness.GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if harness.GPU:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def pass_at(problems, samples: list[list[str]], k: int) -> float:
    from qlcode.execution.evaluate import execute, summarize
    from qlcode.execution.generate import finish

    finished = {p.task_id: [finish(p, t, False) for t in s] for p, s in zip(problems, samples)}
    return summarize(execute(problems, lambda p: finished[p.task_id], show_progress=False), [k])[f"pass@{k}"]


def cpu(args) -> None:
    from qlcode.inference import load_model
    from qlcode.models import Quantization

    torch.set_num_threads(args.threads)
    loaded = load_model("builtin:micro-codellama", None, Quantization(bits=None))
    problems = humaneval()[:args.limit]
    engine = TransformersEngine(loaded.model, loaded.tokenizer, args.batch_size)
    one_row = TransformersEngine(loaded.model, loaded.tokenizer, 1)
    ways = {
        "one generate per problem (before)": lambda n, t: one_generate_per_problem(loaded.model, loaded.tokenizer, problems, n, t, args.max_new_tokens),
        "engine, 1 row": lambda n, t: with_engine(one_row, problems, n, t, args.max_new_tokens),
        f"engine, {engine.rows} rows": lambda n, t: with_engine(engine, problems, n, t, args.max_new_tokens),
    }
    with_engine(engine, problems[:2], 1, 0.2, 4)  # builds the stop-string tables once, outside the timings
    rows = []
    for mode, (n, temperature) in MODES.items():
        seconds: dict[str, list[float]] = {w: [] for w in ways}
        tokens: dict[str, list[int]] = {w: [] for w in ways}
        first: dict[str, list[list[str]]] = {}
        for r in range(args.rounds):
            for way, fn in ways.items():
                s, out = timed(lambda: fn(n, temperature))
                seconds[way].append(s)
                tokens[way].append(sum(len(loaded.tokenizer(t, add_special_tokens=False)["input_ids"]) for o in out for t in o))
                first.setdefault(way, out)
                print(f"{mode} round {r + 1}: {way}: {len(problems) * n / s:.1f} samples/s, {tokens[way][-1] / s:.0f} tokens/s",
                      flush=True)
        base = list(ways)[0]
        for way in ways:
            ratios = [b / s for b, s in zip(seconds[base], seconds[way])]  # paired by round
            rates = [t / s for t, s in zip(tokens[way], seconds[way])]
            score = f"{100 * pass_at(problems, first[way], n):.1f}%" if args.execute and way in (base, list(ways)[-1]) else "-"
            rows.append([mode, f"{n} at T={temperature}" if temperature else "1 greedy", way,
                         f"{len(problems) * n / statistics.median(seconds[way]):.2f}", f"{statistics.median(ratios):.2f}x",
                         f"{statistics.median(rates):.0f}", score])
    import os
    import platform

    import transformers

    load = os.getloadavg()[0]
    print(f"generation: micro-codellama (fp32), HumanEval first {len(problems)} problems, up to {args.max_new_tokens} new tokens, "
          f"{args.threads} torch threads, {args.rounds} alternating rounds (medians)\n{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load:.1f} at the end; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; {time.strftime('%Y-%m-%d')}\n")
    harness.print_table(["mode", "samples", "way", "samples/s", "speed-up (paired by round)", "generated tokens/s", "pass@k (round 1)"], rows)


def codellama_7b() -> str:
    """The random 7B directory with Code Llama's tokenizer beside its weights (vLLM loads both from it)."""
    path = harness.random_codellama("7B")
    if not (path / "tokenizer.json").is_file():
        for f in (harness.REPO / "tests" / "data" / "codellama-tokenizer").glob("tokenizer*.json"):
            shutil.copy(f, path / f.name)
    return str(path)


def gpu(args) -> None:
    import importlib.util

    from qlcode.models import Quantization, load_base, load_tokenizer

    path = codellama_7b()
    tokenizer = load_tokenizer(path)
    vllm = importlib.util.find_spec("vllm") is not None
    rows = []
    model = load_base(path, Quantization(bits=4)).eval()
    engine = TransformersEngine(model, tokenizer, args.batch_size)
    for mode, (n, temperature) in MODES.items():
        problems = humaneval()[:args.gpu_problems if n == 1 else max(1, args.gpu_problems // 4)]
        samples = len(problems) * n
        ways = {"transformers, one generate per problem": lambda: one_generate_per_problem(
                    model, tokenizer, problems, n, temperature, args.new_tokens, use_stops=False),
                f"transformers engine, {engine.rows} rows": lambda: with_engine(engine, problems, n, temperature, args.new_tokens, use_stops=False)}
        for way, fn in ways.items():
            s, _ = timed(fn)
            rows.append([mode, len(problems), way, f"{samples / s:.2f}"])
            print(rows[-1], flush=True)
    del model, engine
    torch.cuda.empty_cache()
    if vllm:
        from qlcode.execution.engines.served import VllmEngine

        served = VllmEngine(path, tokenizer, None, 4)
        for mode, (n, temperature) in MODES.items():
            problems = humaneval()[:args.gpu_problems if n == 1 else max(1, args.gpu_problems // 4)]
            with_engine(served, problems[:1], 1, temperature, 4, use_stops=False)  # warm-up (CUDA graphs)
            s, _ = timed(lambda: with_engine(served, problems, n, temperature, args.new_tokens, use_stops=False))
            rows.append([mode, len(problems), "vLLM (bitsandbytes 4-bit in flight)", f"{len(problems) * n / s:.2f}"])
            print(rows[-1], flush=True)
        del served
        torch.cuda.empty_cache()
    else:
        rows.append(["-", "-", "vLLM", "not installed on this machine: not measured"])
    print(harness.header(f"generation: CodeLlama-7B architecture, random weights, NF4, {args.new_tokens} new tokens per sample"))
    harness.print_table(["mode", "problems", "way", "samples/s"], rows)
    grpo_rows = [grpo_steps(path, use_vllm, args) if (vllm or not use_vllm) else ["with vLLM", "vllm not installed: not measured"]
                 for use_vllm in (False, True)]
    print("\nGRPO (recipes/quickstart-grpo.yaml on the 7B architecture, 4-bit, "
          f"{args.grpo_steps} steps of 8 completions of {args.new_tokens} tokens)")
    harness.print_table(["generation", "steps/min"], grpo_rows)


def grpo_steps(path: str, use_vllm: bool, args) -> list[str]:
    from qlcode.recipe import load_recipe
    from qlcode.train import train

    out = harness.REPO / "build" / "bench-grpo" / ("vllm" if use_vllm else "transformers")
    shutil.rmtree(out, ignore_errors=True)
    recipe = load_recipe(harness.REPO / "recipes" / "quickstart-grpo.yaml", [
        f"model.base={path}", "quant.bits=4", f"train.max_steps={args.grpo_steps}", "train.gradient_checkpointing=true",
        "train.optimizer=paged_adamw_8bit", f"train.grpo.max_completion_length={args.new_tokens}", f"train.grpo.vllm={str(use_vllm).lower()}",
        f"output.dir={out.parent}", f"output.name={out.name}", f"train.save_steps={args.grpo_steps}"])
    result = train(recipe)
    return ["vLLM colocated" if use_vllm else "transformers generate (TRL)", f"{60 * result.steps / result.seconds:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU measurements (CodeLlama-7B architecture)")
    ap.add_argument("--limit", type=int, default=40, help="HumanEval problems (CPU)")
    ap.add_argument("--max-new-tokens", type=int, default=384, help="longest completion (CPU; qlcode eval's default)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-size", type=int, default=None, help="the engine's rows (default: its own choice)")
    ap.add_argument("--execute", action="store_true", help="also run the first round's samples for pass@k")
    ap.add_argument("--gpu-problems", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens per sample (GPU)")
    ap.add_argument("--grpo-steps", type=int, default=3)
    args = ap.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()
