"""A GRPO run's reward curve: a plot (matplotlib) and a Markdown table of its metrics.jsonl.

    python benchmarks/reward_curve.py adapters/quickstart-grpo --out grpo-reward.png

Per step the trainer logs the group's mean reward (share of assert cases passed), the share of
completions that passed every assert, and the share of groups whose rewards differed (the only
ones GRPO learns from). The plot shows each per step (faint) and its moving average over --window
steps; the table gives the means over consecutive windows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qlcode.runs import read_jsonl  # noqa: E402

SERIES = {"reward": "mean reward (share of asserts passed)", "pass_rate": "completions passing every assert",
          "learning_groups": "groups with differing rewards"}


def series(rows: list[dict]) -> dict[str, list[float]]:
    """The plotted values of each logged training step."""
    steps = [r for r in rows if "reward" in r]
    return {"step": [r["step"] for r in steps], "reward": [r["reward"] for r in steps],
            "pass_rate": [r["pass_rate"] for r in steps],
            "learning_groups": [1 - r["frac_reward_zero_std"] for r in steps]}


def windows(values: list[float], size: int) -> list[float]:
    return [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]


def moving_average(values: list[float], size: int) -> list[float]:
    return [sum(values[max(0, i - size + 1):i + 1]) / (i + 1 - max(0, i - size + 1)) for i in range(len(values))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a GRPO run directory (its metrics.jsonl)")
    ap.add_argument("--out", type=Path, default=REPO / "grpo-reward.png")
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(read_jsonl(args.run / "metrics.jsonl"))
    if not data["step"]:
        sys.exit(f"{args.run / 'metrics.jsonl'} has no GRPO steps (no 'reward' column)")
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for (key, label), color in zip(SERIES.items(), ("tab:blue", "tab:green", "tab:gray")):
        ax.plot(data["step"], data[key], color=color, alpha=0.18, linewidth=0.8)
        ax.plot(data["step"], moving_average(data[key], args.window), color=color, linewidth=2,
                label=f"{label}, mean of {args.window} steps")
    ax.set_xlabel("step (one problem, its group of completions)")
    ax.set_ylim(0, 1)
    ax.set_title(f"GRPO on {args.run.name}: execution reward", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = args.out.with_name(args.out.name + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}\n")
    print("| steps | " + " | ".join(SERIES.values()) + " |\n|" + " --- |" * (len(SERIES) + 1))
    means = {key: windows(data[key], args.window) for key in SERIES}
    for i, start in enumerate(range(0, len(data["step"]), args.window)):
        last = min(start + args.window, len(data["step"])) - 1
        print(f"| {data['step'][start]}-{data['step'][last]} | " + " | ".join(f"{means[k][i]:.3f}" for k in SERIES) + " |")


if __name__ == "__main__":
    main()
