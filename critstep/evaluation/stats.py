"""Figures over steps with 95% intervals from a bootstrap over trajectories.

Steps of one trajectory are not independent (one bad early step derails the rest), so the unit
resampled is the trajectory. Each figure is a ratio of sums (matches / steps, NLL / tokens), and
one set of resamples serves every figure, so the intervals of a report are computed on the same
draws. scipy's `bootstrap` resamples per statistic and knows nothing of clusters, hence the few
lines of numpy here (percentile intervals, `n_resamples` draws, a fixed seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000


@dataclass(frozen=True)
class Ratio:
    """Per-trajectory numerators and denominators of one figure (e.g. matches and steps)."""

    numerators: np.ndarray
    denominators: np.ndarray

    @property
    def value(self) -> float | None:
        total = float(self.denominators.sum())
        return float(self.numerators.sum()) / total if total else None


def resample_weights(n_clusters: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each trajectory is drawn in each resample: (n_resamples, n_clusters) counts."""
    if n_clusters == 0:
        return np.zeros((n_resamples, 0))
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_resamples).astype(float)


def interval(ratio: Ratio, weights: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of `ratio` over the resamples in `weights` (None without data)."""
    if ratio.value is None or len(ratio.numerators) < 2:
        return None
    num = weights @ ratio.numerators
    den = weights @ ratio.denominators
    ok = den > 0
    values = num[ok] / den[ok]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_difference(a: Ratio, b: Ratio, weights: np.ndarray, level: float = 0.95) -> dict[str, float | list[float] | None]:
    """a - b on the same trajectories, with the interval of the difference over shared resamples.

    Comparing two models on the same held-out trajectories this way is far tighter than comparing
    their separate intervals, because the trajectories' difficulty cancels out.
    """
    if a.value is None or b.value is None:
        return {"difference": None, "ci95": None}
    diff = a.value - b.value
    if len(a.numerators) < 2:
        return {"difference": diff, "ci95": None}
    ok = (weights @ a.denominators > 0) & (weights @ b.denominators > 0)
    w = weights[ok]
    values = (w @ a.numerators) / (w @ a.denominators) - (w @ b.numerators) / (w @ b.denominators)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"difference": diff, "ci95": [float(low), float(high)]}


def ratio_of(rows: Sequence[tuple[float, float]]) -> Ratio:
    """A `Ratio` from (numerator, denominator) pairs, one per trajectory."""
    array = np.asarray(rows, dtype=float).reshape(-1, 2)
    return Ratio(array[:, 0], array[:, 1])
