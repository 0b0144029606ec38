"""The distilled selector: a trained step classifier (see `critstep distill`) applied offline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from critstep.distill.features import FeatureExtractor
from critstep.distill.persistence import DistilledModel, default_model_dir, load_model
from critstep.distill.policy import MODES
from critstep.errors import ConfigError, ModelError
from critstep.selection import DEFAULT_RATIO, Selection
from critstep.selector.base import Selector
from critstep.trajectory import Trajectory


class DistilledSelector(Selector):
    """Scores every step with the model's calibrated probability and keeps as many as its
    selection policy says: by default the model's own mode (threshold or learned count, whichever
    agreed best with the teacher in training), never more than the `ratio` cap, at least one.

    `mode` overrides the model's: "threshold", "count", or "ratio" (fill the cap: the top
    `step_cap` steps). `threshold=True` is the older spelling of mode "threshold". Without
    `model_dir`, the model shipped with critstep is used. `model` and `extractor` take a model
    already in memory (one `train_distilled` just returned) and its feature extractor instead, so
    nothing is read back from disk and no feature model is loaded twice.
    """

    name = "distilled"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        mode: str | None = None,
        threshold: bool = False,
        device: str | None = None,
        cache: str | Path | None = "default",
        progress: bool = False,
        model: DistilledModel | None = None,
        extractor: FeatureExtractor | None = None,
    ):
        if mode is not None and mode not in MODES:
            raise ConfigError(f"unknown selection mode {mode!r} (choose from {', '.join(MODES)})")
        if threshold and mode not in (None, "threshold"):
            raise ConfigError(f"threshold=True contradicts mode {mode!r}")
        if model is None:
            self.model_dir: Path | None = Path(model_dir) if model_dir is not None else default_model_dir()
            model = load_model(self.model_dir)  # every check of the directory happens here, before any feature
        else:
            self.model_dir = Path(model_dir) if model_dir is not None else None
        self.model = model
        self.mode = "threshold" if threshold else mode
        self.extractor = extractor or FeatureExtractor(model.features, device=device, cache=cache, progress=progress)

    def score(self, trajectories: Sequence[Trajectory]) -> dict[str, np.ndarray]:
        """Calibrated probability that each step is critical, per trajectory id."""
        X, index = self.extractor.transform(trajectories)
        if X.shape[1] != self.model.classifier.n_features_in_:
            raise ModelError(f"features have {X.shape[1]} columns but the model expects {self.model.classifier.n_features_in_}")
        proba = self.model.proba(X)
        rows: dict[str, list[int]] = {}
        for i, (tid, _) in enumerate(index):
            rows.setdefault(tid, []).append(i)
        out = {t.id: np.zeros(0) for t in trajectories}
        for tid, idx in rows.items():
            out[tid] = proba[idx]
        return out

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        env_of = {t.id: t.env for t in trajectories}
        return {
            tid: Selection(tid, self.model.policy.select(p, ratio, self.mode, env_of[tid]), scores=[float(v) for v in p])
            for tid, p in self.score(trajectories).items()
        }
