"""The playground's leaderboard: seconds for one table (a Bradley-Terry fit and its 200-resample
bootstrap) of 100 and 500 votes between three models. Run from a checkout:
`python benchmarks/leaderboard.py`; with PYTHONPATH at an older checkout it times that one's
`qlcode.ui.leaderboard.standings` the same way."""

import random
import time

from qlcode.ui.leaderboard import standings


def votes(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    models = ["base", "adapter:a", "adapter:b"]
    rows = []
    for _ in range(n):
        a, b = rng.sample(models, 2)
        rows.append({"chosen_model": a, "rejected_model": b})
    return rows


if __name__ == "__main__":
    for n in (100, 500):
        rows = votes(n)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            standings(rows)
            times.append(time.perf_counter() - start)
        print(f"{n} votes: one table in {sorted(times)[1]:.3f} s (median of 3)")
