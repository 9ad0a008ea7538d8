"""The GPU benchmark scripts run end to end on CPU (small shapes, Triton interpreted): their tables
and the checks in them, not their timings. And the reward-curve plot of a GRPO run."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def table(script: str, *args: str) -> list[dict[str, str]]:
    """Run benchmarks/<script> and read its Markdown table back as rows."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CPU, Triton interpreter: a run of the script, its timings are not figures" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _number(cell: str) -> float:
    return float(cell.rstrip("%").replace(",", ""))


def test_dequant_benchmark_covers_every_projection_and_agrees_with_bitsandbytes():
    """Each shape measured --repeats times: each figure's median lies within its min-max."""
    rows = table("dequant.py", "--arch", "7B", "--scale", "4", "--dtype", "fp16", "--iters", "1", "--repeats", "2")
    assert [r["weight"] for r in rows] == [f"7B {p}" for p in ("q", "k", "v", "o", "gate", "up", "down")]
    assert rows[4]["shape"] == "2752x1024" and rows[6]["shape"] == "1024x2752"
    assert all(r["bit-exact"] == "yes" for r in rows)
    for r in rows:
        for figure in ("qlcode GB/s", "bitsandbytes GB/s", "copy GB/s", "qlcode / copy"):
            low, high = (_number(x) for x in r[f"{figure.removesuffix(' GB/s')} min-max"].split("-"))
            assert low <= _number(r[figure]) <= high, (r["weight"], figure, r)


def test_train_step_benchmark_runs_each_configuration_to_the_same_first_loss():
    """The plain stack and qlcode with the recipes' dropout 0.05: the fused blocks draw PEFT's masks in
    PEFT's order, so the first step's loss agrees (fp32 on CPU: to 1e-3)."""
    rows = table("train_step.py", "--scale", "32", "--layers", "2", "--seq-len", "64", "--steps", "1", "--warmup", "1",
                 "--repeats", "2", "--only", "peft + bitsandbytes", "qlcode")
    assert [r["configuration"] for r in rows] == ["peft + bitsandbytes", "qlcode"]
    assert rows[0]["vs peft + bitsandbytes"] == "1.00x"
    assert abs(float(rows[0]["first-step loss"]) - float(rows[1]["first-step loss"])) < 1e-3


def test_mlp_memory_benchmark_finds_the_fused_mlp_below_peft_s_peak():
    """One Llama-shaped MLP block at 512 tokens (bf16 autocast, the CPU allocator's exact bytes):
    the fused MLP's forward + backward peaks below peft + bitsandbytes' (measured 23.9 bytes per
    token and intermediate unit against 33.9; 42.7 before the SwiGLU ran in chunks and the blocks in bf16)."""
    rows = table("mlp_memory.py", "--family", "llama", "--tokens", "512")
    assert [(r["family"], r["tokens"]) for r in rows] == [("llama", "512")]
    peft, fused = float(rows[0]["peft + bitsandbytes"]), float(rows[0]["qlcode fused"])
    assert 0 < fused < 0.8 * peft


def test_decode_benchmark_generates_the_same_tokens_through_both_kernel_paths():
    rows = table("decode.py", "--scale", "32", "--layers", "2", "--new-tokens", "6", "--batch", "1", "3", "--iters", "1")
    assert [r["batch"] for r in rows] == ["1", "3"]
    assert all(r["same tokens"] == "100%" for r in rows)


def test_reward_curve_plots_a_grpo_run_and_tables_its_windows(tmp_path):
    rows = [{"step": 0, "eval_loss": 1.0}]  # a row without GRPO's columns is not a step of the curve
    rows += [{"step": i + 1, "reward": r, "pass_rate": p, "frac_reward_zero_std": z}
             for i, (r, p, z) in enumerate([(0.0, 0.0, 1.0), (0.5, 0.25, 0.0), (1.0, 1.0, 0.5)])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reward_curve.py"), str(tmp_path), "--out",
                          str(tmp_path / "curve.png"), "--window", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[2:] == ["| 1-2 | 0.250 | 0.125 | 0.500 |", "| 3-3 | 1.000 | 1.000 | 0.500 |"]
