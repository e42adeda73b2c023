"""Aggregate statistics for leaderboards: means and IQMs with 95% hierarchical bootstrap intervals.

Scores are grouped by seed (``list`` of per-seed arrays of per-task scores). The bootstrap resamples
seeds with replacement and then tasks within each drawn seed (a two-level, stratified bootstrap as in
rliable's spirit: seeds are the independent unit, tasks the repeated measure), and reports the 2.5 and
97.5 percentiles of the statistic over the resamples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as sp_stats


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% trimmed mean)."""
    return float(sp_stats.trim_mean(np.asarray(x, dtype=float), 0.25))


def mean(x: np.ndarray) -> float:
    return float(np.mean(x))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def fmt(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(groups: list[np.ndarray], statistic: Callable[[np.ndarray], float] = mean, reps: int = 2000,
              seed: int = 0, level: float = 0.95) -> Estimate:
    """Point estimate on all scores and a ``level`` percentile interval from the two-level bootstrap."""
    groups = [np.asarray(g, dtype=float).ravel() for g in groups if len(g)]
    if not groups:
        raise ValueError("bootstrap of no scores")
    rng = np.random.default_rng(seed)
    point = statistic(np.concatenate(groups))
    stats = np.empty(reps)
    for r in range(reps):
        picked = rng.integers(len(groups), size=len(groups))
        stats[r] = statistic(np.concatenate([groups[i][rng.integers(len(groups[i]), size=len(groups[i]))]
                                             for i in picked]))
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Estimate(point, float(low), float(high))
