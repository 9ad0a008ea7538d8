"""The votes aggregated per model: wins, losses, ties, win rate, and a Bradley-Terry score.

Bradley-Terry: P(i beats j) = p_i / (p_i + p_j), fitted by maximum likelihood with
Newton's method, a tie counting half a win for each side. Scores are on the Elo scale,
1000 + 400 log10(p_i), so 400 points mean 10:1 odds. A model that has won every vote has no finite
maximum-likelihood score, so each model also plays `prior` virtual wins and losses against a fixed
reference of 1000 (pass prior=0 for the plain estimate). The interval is the 2.5th-97.5th
percentile over bootstrap resamples of the votes (resamples=0: no interval), all resamples fitted
as one batch (one solve, not one per resample).

The playground keeps a Leaderboard: blind votes and votes cast with the names shown are two
separate Boards (a voter who knows the models is not a fair judge of them), each updated one vote
at a time and fitted only when read after new votes.
"""

from __future__ import annotations

import threading
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


def bradley_terry(points: np.ndarray, prior: float = PRIOR, iterations: int = 100) -> np.ndarray:
    """Elo-scale scores from points[..., i, j] = points model i took from its games against j; a
    stack of matrices (resamples, n, n) is fitted as one batch, each exactly as it would be alone.

    Newton's method on log-strengths (the log-likelihood is concave: a few steps reach the maximum,
    where plain MM iterations crawl for thousands); without a prior the scale is fixed by a mean
    log-strength of zero."""
    points = np.asarray(points, dtype=float)
    n = points.shape[-1]
    played = points + np.swapaxes(points, -1, -2)
    wins = points.sum(axis=-1) + prior
    theta = np.zeros(points.shape[:-1])
    for _ in range(iterations):
        p = np.exp(theta)
        beats = p[..., :, None] / (p[..., :, None] + p[..., None, :])  # P(i beats j)
        ref = p / (p + 1.0)  # P(i beats the reference)
        grad = wins - (played * beats).sum(axis=-1) - 2 * prior * ref
        w = played * beats * (1 - beats)
        hess = w - np.eye(n) * (w.sum(axis=-1) + 2 * prior * ref * (1 - ref))[..., None]
        if prior == 0:  # singular along (1, ..., 1): this solves with the step's mean at zero
            hess = hess - 1.0
        step = np.clip(np.linalg.solve(hess, -grad[..., None])[..., 0], -2.0, 2.0)  # a bounded step keeps it stable
        theta = theta + step
        if np.max(np.abs(step)) < 1e-12:
            break
    return 1000 + 400 * theta / np.log(10)


def _points(played: list[tuple[str, str, float]], index: dict[str, int], samples: np.ndarray | None = None) -> np.ndarray:
    """points[i, j] for the games, or one such matrix per row of `samples` (indices into the games)."""
    a = np.array([index[g[0]] for g in played])
    b = np.array([index[g[1]] for g in played])
    s = np.array([g[2] for g in played])
    picks = np.arange(len(played))[None] if samples is None else samples
    points = np.zeros((len(picks), len(index), len(index)))
    rows = np.repeat(np.arange(len(picks)), picks.shape[1])
    np.add.at(points, (rows, a[picks].ravel(), b[picks].ravel()), s[picks].ravel())
    np.add.at(points, (rows, b[picks].ravel(), a[picks].ravel()), 1 - s[picks].ravel())
    return points[0] if samples is None else points


def fitted(played: list[tuple[str, str, float]], prior: float = PRIOR, resamples: int = BOOTSTRAP,
           seed: int = 0) -> tuple[list[Standing], int]:
    """(one Standing per model that has a vote, best score first; the number of Bradley-Terry solves it took)."""
    index = {m: i for i, m in enumerate(sorted({m for a, b, _ in played for m in (a, b)}))}
    if not index:
        return [], 0
    score = bradley_terry(_points(played, index), prior)
    if resamples:
        samples = np.random.default_rng(seed).integers(0, len(played), (resamples, len(played)))
        low, high = np.percentile(bradley_terry(_points(played, index, samples), prior), [2.5, 97.5], axis=0)
    else:
        low = high = score
    tally = {m: [0, 0, 0] for m in index}
    for a, b, s in played:
        if s == 0.5:
            tally[a][2] += 1
            tally[b][2] += 1
        else:
            tally[a][0] += 1
            tally[b][1] += 1
    table = [Standing(m, sum(tally[m]), *tally[m], float(score[i]), float(low[i]), float(high[i])) for m, i in index.items()]
    return sorted(table, key=lambda s: -s.score), 1 + bool(resamples)


def standings(rows: Iterable[dict], prior: float = PRIOR, resamples: int = BOOTSTRAP, seed: int = 0) -> list[Standing]:
    """One Standing per model that has a vote, best score first."""
    return fitted(games(rows), prior, resamples, seed)[0]


class Board:
    """One kind of vote's standings, kept as a list of games that each vote extends (the vote files
    are read once, at start); fitted when read after new votes, and cached until the next one."""

    def __init__(self, resamples: int = BOOTSTRAP):
        self.played: list[tuple[str, str, float]] = []
        self.resamples = resamples
        self.solves = 0  # Bradley-Terry solves so far (a batched bootstrap is one)
        self._table: list[Standing] | None = []

    def add(self, row: dict) -> None:
        new = games([row])
        if new:
            self.played.extend(new)
            self._table = None

    def standings(self) -> list[Standing]:
        if self._table is None:
            self._table, solves = fitted(self.played, resamples=self.resamples)
            self.solves += solves
        return self._table


class Leaderboard:
    """Blind votes and votes cast with the names shown, on two Boards (thread-safe: votes come from many sessions)."""

    def __init__(self, rows: Iterable[dict] = (), resamples: int = BOOTSTRAP):
        self.blind, self.named = Board(resamples), Board(resamples)
        self.lock = threading.Lock()
        for row in rows:
            self.add(row)

    def add(self, row: dict) -> None:
        with self.lock:
            (self.blind if row.get("blind") else self.named).add(row)

    def standings(self) -> tuple[list[Standing], list[Standing]]:
        """(blind, named)."""
        with self.lock:
            return self.blind.standings(), self.named.standings()
