"""Pretrain builtin:micro-codellama the way Code Llama was trained, at a tiny scale.

    python -m qlcode.builtin.build.pretrain            # 46 minutes on 2 CPU cores
    python -m qlcode.builtin.build.pretrain --resume   # after a kill: from the last checkpoint

The corpus is the standard library's Python source and CPython's test suite, without HELD_OUT_MODULES
and their tests (evaluation reads the held-out modules alone). Files are cut into
documents at top-level statements; each epoch, 90% of the documents become infilling examples
(half prefix-suffix-middle, half suffix-prefix-middle, split points between characters, as in the
paper) and the rest stay plain causal LM; all are packed into fixed-length sequences with loss on
every token. RoPE base 1e6 comes from the model config. bf16 autocast, AdamW, cosine schedule.
The result replaces the packaged weights (in bf16) and `pretraining.json` records the run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.builtin.build.micro_codellama import untrained_model
from qlcode.builtin.stdlib_corpus import iter_sources
from qlcode.progress import progress_bar
from qlcode.data.fim import encode, fim_example, fim_ids, split_points
from qlcode.files import write_text_atomic

MAX_DOC_CHARS = 600
FIM_RATE, SPM_RATE = 0.9, 0.5


def documents(held_out: bool, tests: bool = False) -> list[str]:
    """Source files cut at top-level statements into pieces of about MAX_DOC_CHARS."""
    docs = []
    for _, source in iter_sources(held_out=held_out, tests=tests):
        piece: list[str] = []
        size = 0
        for line in source.splitlines(keepends=True):
            top_level = line[:1] not in (" ", "\t", "\n", ")", "]", "}", "#", "")
            if piece and (size > 2 * MAX_DOC_CHARS or (size > MAX_DOC_CHARS and top_level)):
                docs.append("".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece and "".join(piece).strip():
            docs.append("".join(piece))
    return docs


def epoch_tokens(tokenizer, docs: list[str], seed: int, unit: str = "char") -> torch.Tensor:
    """One epoch's token stream: documents shuffled, 90% turned into infilling examples."""
    rng = random.Random(seed)
    ids = fim_ids(tokenizer)
    order = list(range(len(docs)))
    rng.shuffle(order)
    stream: list[int] = []
    for i in order:
        doc = docs[i]
        if rng.random() < FIM_RATE:
            prefix, middle, suffix = split_points(doc, rng, unit)
            tokens, _ = fim_example(tokenizer, ids, prefix, middle, suffix, spm=rng.random() < SPM_RATE)
        else:
            tokens = [tokenizer.bos_token_id, *encode(tokenizer, doc), tokenizer.eos_token_id]
        stream.extend(tokens)
    return torch.tensor(stream, dtype=torch.long)


def batches(tokenizer, docs: list[str], seq_len: int, batch: int, seed: int, unit: str = "char"):
    """Endless (batch, seq_len) batches of packed sequences, a fresh infilling draw each epoch."""
    epoch = 0
    while True:
        stream = epoch_tokens(tokenizer, docs, seed + epoch, unit)
        seqs = stream[: len(stream) // seq_len * seq_len].view(-1, seq_len)
        perm = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed + epoch))
        for k in range(0, len(perm) - batch + 1, batch):
            yield seqs[perm[k : k + batch]]
        epoch += 1


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-dir", type=Path, default=Path("build/pretrain"))
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", type=Path, default=MODELS["micro-codellama"])
    ap.add_argument("--fim-unit", choices=["char", "line"], default="char", help="where infilling splits fall")
    ap.add_argument("--stage", type=int, default=1,
                    help="1 starts from the seeded initialisation; 2 continues from the weights in --out")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    if args.stage == 1:
        model = untrained_model().to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    start_step, tokens_seen, seconds = 0, 0, 0.0
    ckpt = args.checkpoint_dir / "state.pt"
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_step, tokens_seen, seconds = state["step"], state["tokens"], state["seconds"]

    docs = documents(held_out=False, tests=True)
    data = batches(tokenizer, docs, args.seq_len, args.batch, args.seed + 1000 * (args.stage - 1), args.fim_unit)
    for _ in range(start_step):  # replay the data order up to the checkpoint
        next(data)
    model.train()
    t0 = time.perf_counter() - seconds
    progress = progress_bar("pretrain", "loss {task.fields[loss]}", "{task.fields[tps]} tok/s")
    task = progress.add_task("pretrain", total=args.steps, completed=start_step, loss="-", tps="-")
    losses: list[float] = []
    with progress:
        for step in range(start_step, args.steps):
            x = next(data).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens_seen += x.numel()
            losses.append(loss.item())
            elapsed = time.perf_counter() - t0
            progress.update(task, completed=step + 1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}",
                            tps=f"{tokens_seen / elapsed:,.0f}" if step > start_step else "-")
            if (step + 1) % args.save_every == 0:
                args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "tokens": tokens_seen, "seconds": elapsed}, ckpt.with_suffix(".tmp"))
                ckpt.with_suffix(".tmp").replace(ckpt)
                progress.console.log(f"step {step + 1}: loss {sum(losses[-100:]) / len(losses[-100:]):.3f}, "
                                     f"{tokens_seen:,} tokens, {elapsed:.0f} s, checkpoint saved")

    wall = time.perf_counter() - t0
    tmp = args.out.parent / ".micro-codellama.tmp"
    model.to(torch.bfloat16).save_pretrained(tmp)
    (tmp / "model.safetensors").replace(args.out / "model.safetensors")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    stage = {
        "stage": args.stage, "documents": len(docs), "fim_rate": FIM_RATE, "spm_rate": SPM_RATE, "fim_unit": args.fim_unit,
        "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "tokens_seen": tokens_seen,
        "lr": args.lr, "warmup": args.warmup, "schedule": "cosine to 10%", "optimizer": "AdamW(0.9, 0.95), wd 0.1",
        "precision": "bf16 autocast", "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "wall_seconds": round(wall), "final_loss_last_100_steps": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4),
        "date": time.strftime("%Y-%m-%d"),
    }
    record_path = args.out / "pretraining.json"
    stages = json.loads(record_path.read_text())["stages"] if args.stage > 1 and record_path.is_file() else []
    record = {"corpus": "Python standard library source and test suite, without qlcode.builtin.HELD_OUT_MODULES "
                        "and their tests",
              "stages": [s for s in stages if s["stage"] < args.stage] + [stage]}
    record["tokens_seen"] = sum(s["tokens_seen"] for s in record["stages"])
    record["wall_seconds"] = sum(s["wall_seconds"] for s in record["stages"])
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
