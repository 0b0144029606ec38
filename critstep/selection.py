"""Selections: which steps of a trajectory are critical, i.e. carry the training loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
