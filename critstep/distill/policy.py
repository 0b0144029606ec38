"""How many steps to keep: the selection policy a distilled model learns alongside its scores.

The teacher marks far fewer steps than the 30% cap (about 17% overall, 12-14% in ScienceWorld),
so filling the cap ("ratio" mode) halves precision. A model therefore also learns how many
steps each trajectory needs, in one of two ways, and keeps the one that agrees best with the
teacher on its own out-of-fold predictions:

- "threshold": the steps whose calibrated probability reaches a tuned cut;
- "count": the top round(scale x sum of probabilities) steps: the expected number of critical
  steps, learned per trajectory from the calibrated probabilities, with a tuned scale.

Either way the `--ratio` cap still bounds the count (at least one step is kept). An env adapted
with a few of its own labels (`critstep distill --base`, adapt.py) gets its own cut, used in
threshold mode for its trajectories; for envs the model was trained on, per-env cuts agreed less
with the teacher than one cut for all on the development split, so there are none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from critstep.errors import ConfigError
from critstep.selection import DEFAULT_RATIO, select_top, step_cap

MODES = ("threshold", "count", "ratio")
LEARNED_MODES = ("threshold", "count")
THRESHOLDS = np.round(np.arange(0.05, 0.9, 0.01), 2)
SCALES = np.round(np.arange(0.5, 2.0001, 0.05), 2)


def count_for(scores: np.ndarray, mode: str, ratio: float, threshold: float, scale: float) -> int:
    """How many steps `mode` keeps of a trajectory with these calibrated probabilities."""
    cap = step_cap(len(scores), ratio)
    if mode == "ratio":
        return cap
    if mode == "threshold":
        k = int((scores >= threshold).sum())
    elif mode == "count":
        k = int(np.floor(scale * float(scores.sum()) + 0.5))
    else:
        raise ConfigError(f"unknown selection mode {mode!r} (choose from {', '.join(MODES)})")
    return min(cap, max(1, k))


@dataclass
class SelectionPolicy:
    """The learned rule for how many steps to keep; `mode` is the model's default."""

    mode: str = "threshold"
    threshold: float = 0.5
    count_scale: float = 1.0
    env_thresholds: dict[str, float] = field(default_factory=dict)  # adapted envs only, always in threshold mode
    # out-of-fold micro F1 of each mode when the policy was fitted: why `mode` was chosen
    fit_f1: dict[str, float] = field(default_factory=dict)

    def select(self, scores: Sequence[float] | np.ndarray, ratio: float = DEFAULT_RATIO, mode: str | None = None, env: str | None = None) -> list[int]:
        """The steps to keep; an adapted `env` uses its own cut (threshold mode) unless `mode` is given."""
        p = np.asarray(scores, dtype=float)
        if len(p) == 0:
            return []
        if mode is None and env in self.env_thresholds:
            return select_top(p, count_for(p, "threshold", ratio, self.env_thresholds[env], self.count_scale))
        threshold = self.env_thresholds.get(env, self.threshold) if env is not None else self.threshold
        return select_top(p, count_for(p, mode or self.mode, ratio, threshold, self.count_scale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionPolicy:
        policy = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if policy.mode not in MODES:
            raise ConfigError(f"unknown selection mode {policy.mode!r} (choose from {', '.join(MODES)})")
        try:  # checked here, not when the first trajectory is selected
            policy.threshold, policy.count_scale = float(policy.threshold), float(policy.count_scale)
            policy.env_thresholds = {str(env): float(cut) for env, cut in dict(policy.env_thresholds).items()}
        except (TypeError, ValueError) as e:
            raise ConfigError(f"the selection policy's threshold, count scale and per-env cuts must be numbers ({e})") from None
        return policy


def _f1(chosen: list[np.ndarray], gold: list[np.ndarray]) -> float:
    tp = sum(int(g[c].sum()) for c, g in zip(chosen, gold, strict=True))
    selected = sum(len(c) for c in chosen)
    positives = sum(int(g.sum()) for g in gold)
    return 2 * tp / (selected + positives) if selected + positives else 0.0


def best_threshold(proba: Sequence[np.ndarray], gold: Sequence[np.ndarray], ratio: float = DEFAULT_RATIO) -> float:
    """The cut with the highest micro F1 of threshold-mode selection on these trajectories."""
    return _best([np.asarray(p, dtype=float) for p in proba], [np.asarray(g, dtype=bool) for g in gold], "threshold", THRESHOLDS, ratio)[0]


def _best(proba: list[np.ndarray], gold: list[np.ndarray], mode: str, grid: np.ndarray, ratio: float) -> tuple[float, float]:
    """(best value on `grid`, its micro F1) for `mode` on these trajectories."""
    best, best_f1 = float(grid[0]), -1.0
    for value in grid:
        chosen = [np.array(select_top(p, count_for(p, mode, ratio, float(value), float(value))), dtype=int) for p in proba]
        f1 = _f1(chosen, gold)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(value), f1
    return best, best_f1


def fit_policy(
    proba: Sequence[np.ndarray],
    gold: Sequence[np.ndarray],
    ratio: float = DEFAULT_RATIO,
    modes: Sequence[str] = LEARNED_MODES,
) -> SelectionPolicy:
    """Tune the cut and the count scale on out-of-fold `proba` (one array per trajectory) against
    the teacher's 0/1 `gold`, and choose as default the mode (of `modes`) with the higher micro F1."""
    proba = [np.asarray(p, dtype=float) for p in proba]
    gold = [np.asarray(g, dtype=bool) for g in gold]
    threshold, f1_threshold = _best(proba, gold, "threshold", THRESHOLDS, ratio)
    scale, f1_count = _best(proba, gold, "count", SCALES, ratio)
    ratio_f1 = _f1([np.array(select_top(p, step_cap(len(p), ratio)), dtype=int) for p in proba], gold)
    fit_f1 = {"threshold": f1_threshold, "count": f1_count, "ratio": ratio_f1}
    mode = max(modes, key=lambda m: fit_f1[m])
    return SelectionPolicy(mode, threshold, scale, fit_f1={k: round(v, 4) for k, v in fit_f1.items()})
