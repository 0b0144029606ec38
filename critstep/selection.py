"""Selections: which steps of a trajectory are critical, i.e. carry the training loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from critstep.trajectory import Trajectory

CATEGORIES = ("plan_creation", "critical_observation", "critical_action", "self_correction")
DEFAULT_RATIO = 0.3


def step_cap(n_steps: int, ratio: float = DEFAULT_RATIO) -> int:
    """At most `ratio` of the steps, rounded down, but at least one (ATLaS's rule)."""
    if n_steps <= 0:
        return 0
    return max(1, min(n_steps, math.floor(n_steps * ratio + 1e-9)))


@dataclass
class Selection:
    """The chosen steps of one trajectory (0-based assistant indices, sorted, unique).

    `scores` holds one score per step when the selector produces them (probabilities for the
    distilled selector), so that threshold-free metrics can be computed later.
    """

    trajectory_id: str
    steps: list[int]
    scores: list[float] | None = None
    categories: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = sorted(set(self.steps))


def select_top(scores: Sequence[float] | np.ndarray, k: int) -> list[int]:
    """The indices of the `k` highest scores, sorted; ties go to the earlier step (stable)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]
    return sorted(int(i) for i in order)


def top_k(scores: Sequence[float] | np.ndarray, ratio: float = DEFAULT_RATIO) -> list[int]:
    """The indices of the `step_cap` highest scores; ties go to the earlier step (stable)."""
    return select_top(scores, step_cap(len(scores), ratio))


def expected_disagreement(probabilities: Sequence[float] | np.ndarray, steps: Sequence[int]) -> float:
    """Expected number of steps on which the teacher would differ from `steps`.

    With calibrated, independent step probabilities p, a chosen step is wrong with chance 1 - p
    and a skipped one with chance p. The sum is what one oracle call is expected to fix, which is
    why it ranks trajectories for the cascade.
    """
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    chosen = np.zeros(len(p), dtype=bool)
    chosen[list(steps)] = True
    return float((1 - p[chosen]).sum() + p[~chosen].sum())


def selected_steps(trajectory: Trajectory) -> list[int] | None:
    """The selection recorded in a trajectory read from a file, if it carries one.

    A record-level `critical_steps` wins; otherwise per-message flags (`weight`/`loss`) on steps.
    """
    recorded = trajectory.metadata.get("critical_steps")
    if recorded is not None:
        return sorted(int(i) for i in recorded)
    steps = [trajectory.messages[i] for i in trajectory.step_message_indices]
    if any(m.train is not None for m in steps):
        return [k for k, m in enumerate(steps) if m.train]
    return None
