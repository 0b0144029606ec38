"""Labeled step data: trajectories + teacher labels -> (X, y, categories, groups), checked against each other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from critstep.distill.estimator import category_codes
from critstep.distill.features import FeatureExtractor, StepIndex
from critstep.errors import InputError
from critstep.labels import TrajectoryLabels
from critstep.trajectory import Trajectory


@dataclass
class StepDataset:
    """One row per step of the labeled trajectories: `categories` each step's class code
    (`category_codes`: 0 = not critical), `groups` trajectory ids (for grouped CV)."""

    X: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    index: StepIndex
    trajectories: list[Trajectory]

    @property
    def y(self) -> np.ndarray:
        """1 for a critical step, 0 for the rest."""
        return (self.categories > 0).astype(int)


def labeled_trajectories(trajectories: Sequence[Trajectory], labels: Mapping[str, TrajectoryLabels]) -> list[Trajectory]:
    """The trajectories that have labels, in trajectory order; labels must match them exactly."""
    by_id = {t.id: t for t in trajectories}
    for tid, lab in labels.items():
        t = by_id.get(tid)
        if t is None:
            raise InputError(f"labels for unknown trajectory id {tid!r}")
        if t.n_steps != lab.n_steps:
            raise InputError(f"labels say {lab.n_steps} steps but trajectory {tid!r} has {t.n_steps}")
        bad = [s for s in lab.steps if not 0 <= s < t.n_steps]
        if bad:
            raise InputError(f"labels of {tid!r} name steps {bad}, outside 0..{t.n_steps - 1}")
    return [t for t in trajectories if t.id in labels and t.n_steps > 0]


def dataset_of(X: np.ndarray, index: StepIndex, labels: Mapping[str, TrajectoryLabels], trajectories: list[Trajectory]) -> StepDataset:
    """The dataset of feature rows `X` (one per entry of `index`) with the labels' categories."""
    category = {(tid, c.step): c.category for tid, lab in labels.items() for c in lab.critical}
    return StepDataset(X, category_codes([category.get(key) for key in index]), np.array([tid for tid, _ in index]), index, trajectories)


def build_dataset(extractor: FeatureExtractor, trajectories: Sequence[Trajectory], labels: Mapping[str, TrajectoryLabels]) -> StepDataset:
    chosen = labeled_trajectories(trajectories, labels)
    X, index = extractor.transform(chosen)
    return dataset_of(X, index, labels, chosen)
