"""The votes aggregated per model: wins, losses, ties, win rate, and a Bradley-Terry score.

Bradley-Terry: P(i beats j) = p_i / (p_i + p_j), fitted by maximum likelihood with Hunter's (2004)
MM iterations, a tie counting half a win for each side. Scores are on the Elo scale,
1000 + 400 log10(p_i), so 400 points mean 10:1 odds. A model that has won every vote has no finite
maximum-likelihood score, so each model also plays `prior` virtual wins and losses against a fixed
reference of 1000 (pass prior=0 for the plain estimate). The interval is the 2.5th-97.5th
percentile over bootstrap resamples of the votes (resamples=0: no interval).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PRIOR = 0.5
BOOTSTRAP = 200


@dataclass(frozen=True)
class Standing:
    model: str
    votes: int
    wins: int
    losses: int
    ties: int
    score: float
    low: float
    high: float

    @property
    def win_rate(self) -> float:
        return self.wins / self.votes if self.votes else 0.0


def games(rows: Iterable[dict]) -> list[tuple[str, str, float]]:
    """(model a, model b, a's points: 1 win, 0.5 tie) for each vote row between two different models
    (a model against itself says nothing about the ranking)."""
    out = []
    for row in rows:
        a, b, points = (*row["models"], 0.5) if "models" in row else (row["chosen_model"], row["rejected_model"], 1.0)
        if a != b:
            out.append((a, b, points))
    return out


def bradley_terry(points: np.ndarray, prior: float = PRIOR, iterations: int = 10_000) -> np.ndarray:
    """Elo-scale scores from points[i, j] = points model i took from its games against j."""
    n = len(points)
    played = points + points.T
    wins = points.sum(axis=1) + prior
    p = np.ones(n)
    for _ in range(iterations):
        denom = (played / (p[:, None] + p[None, :])).sum(axis=1) + 2 * prior / (p + 1.0)
        new = wins / denom
        if prior == 0:  # no reference: fix the scale by the geometric mean
            new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < 1e-12:
            p = new
            break
        p = new
    return 1000 + 400 * np.log10(p)


def _points(played: list[tuple[str, str, float]], index: dict[str, int]) -> np.ndarray:
    points = np.zeros((len(index), len(index)))
    for a, b, s in played:
        points[index[a], index[b]] += s
        points[index[b], index[a]] += 1 - s
    return points


def standings(rows: Iterable[dict], prior: float = PRIOR, resamples: int = BOOTSTRAP, seed: int = 0) -> list[Standing]:
    """One Standing per model that has a vote, best score first."""
    played = games(rows)
    index = {m: i for i, m in enumerate(sorted({m for a, b, _ in played for m in (a, b)}))}
    if not index:
        return []
    score = bradley_terry(_points(played, index), prior)
    rng = np.random.default_rng(seed)
    boot = np.array([bradley_terry(_points([played[k] for k in rng.integers(0, len(played), len(played))], index), prior)
                     for _ in range(resamples)]) if resamples else score[None]
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    tally = {m: [0, 0, 0] for m in index}
    for a, b, s in played:
        if s == 0.5:
            tally[a][2] += 1
            tally[b][2] += 1
        else:
            tally[a][0] += 1
            tally[b][1] += 1
    table = [Standing(m, sum(tally[m]), *tally[m], float(score[i]), float(low[i]), float(high[i])) for m, i in index.items()]
    return sorted(table, key=lambda s: -s.score)
