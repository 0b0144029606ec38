"""The distilled selector: a trained step classifier (see `critstep distill`) applied offline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from critstep.distill.estimator import select_by_scores
from critstep.distill.features import FeatureExtractor
from critstep.distill.persistence import load_model
from critstep.errors import ModelError
from critstep.selection import DEFAULT_RATIO, Selection
from critstep.selector.base import Selector
from critstep.trajectory import Trajectory


class DistilledSelector(Selector):
    """Scores every step with the model's calibrated probability and keeps the top `step_cap`;
    with `threshold=True`, only the steps at or above the model's tuned threshold (still capped,
    at least one), so the model decides how many steps a trajectory needs."""

    name = "distilled"

    def __init__(self, model_dir: str | Path, threshold: bool = False, device: str | None = None, cache: str | Path | None = "default"):
        self.model = load_model(model_dir)
        self.threshold = threshold
        self.extractor = FeatureExtractor(self.model.features, device=device, cache=cache)

    def score(self, trajectories: Sequence[Trajectory]) -> dict[str, np.ndarray]:
        """Calibrated probability that each step is critical, per trajectory id."""
        X, index = self.extractor.transform(trajectories)
        if X.shape[1] != self.model.classifier.n_features_in_:
            raise ModelError(f"features have {X.shape[1]} columns but the model expects {self.model.classifier.n_features_in_}")
        proba = self.model.classifier.predict_proba(X)[:, 1] if len(X) else np.zeros(0)
        out = {t.id: np.zeros(0) for t in trajectories}
        rows: dict[str, list[int]] = {}
        for i, (tid, _) in enumerate(index):
            rows.setdefault(tid, []).append(i)
        for tid, idx in rows.items():
            out[tid] = proba[idx]
        return out

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        cut = self.model.classifier.threshold_ if self.threshold else None
        return {
            tid: Selection(tid, select_by_scores(p, ratio, cut) if len(p) else [], scores=[float(v) for v in p])
            for tid, p in self.score(trajectories).items()
        }
