"""Training the distilled selector: grouped cross-validation, then a final fit on all labels.

`train_distilled` is what `critstep distill` runs; the demo and the active-labeling loop call it
directly. `cross_validate` is the honest estimate: folds are whole trajectories, and the
calibration and threshold of each fold's model come from inner folds of its training part only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critstep.distill.dataset import StepDataset, build_dataset
from critstep.distill.estimator import StepClassifier, select_by_scores
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.persistence import MODEL_KIND, DistilledModel, save_model, versions
from critstep.errors import InputError
from critstep.io import check_replaceable_dir
from critstep.labels import TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection
from critstep.trajectory import Trajectory


def selections_from_proba(
    index: Sequence[tuple[str, int]], proba: np.ndarray, ratio: float = DEFAULT_RATIO, threshold: float | None = None
) -> dict[str, Selection]:
    """Per trajectory, the capped top-k (or threshold-mode) selection, with the probabilities as scores."""
    rows: dict[str, list[int]] = {}
    for i, (tid, _) in enumerate(index):
        rows.setdefault(tid, []).append(i)
    out: dict[str, Selection] = {}
    for tid, idx in rows.items():
        p = proba[idx]
        out[tid] = Selection(tid, select_by_scores(p, ratio, threshold), scores=[float(v) for v in p])
    return out


def out_of_fold(data: StepDataset, folds: int, make: Callable[[], StepClassifier]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, per-row threshold of the fold's model), every row predicted by a model that never saw its trajectory."""
    from sklearn.model_selection import GroupKFold

    proba = np.zeros(len(data.y))
    thresholds = np.zeros(len(data.y))
    for train, test in GroupKFold(folds).split(data.X, data.y, data.groups):
        clf = make().fit(data.X[train], data.y[train], groups=data.groups[train])
        proba[test] = clf.predict_proba(data.X[test])[:, 1]
        thresholds[test] = clf.threshold_
    return proba, thresholds


def cross_validate(
    data: StepDataset, labels: Mapping[str, TrajectoryLabels], folds: int = 5, ratio: float = DEFAULT_RATIO, **classifier: Any
) -> dict[str, Any]:
    """Grouped k-fold metrics in ratio mode (top-k at the cap) and threshold mode."""
    n_groups = len(set(data.groups))
    if n_groups < folds:
        raise InputError(f"{n_groups} labeled trajectories: too few for {folds}-fold cross-validation")
    classifier.setdefault("ratio", ratio)
    proba, thresholds = out_of_fold(data, folds, lambda: StepClassifier(**classifier))
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    ratio_sel = selections_from_proba(data.index, proba, ratio)
    threshold_sel: dict[str, Selection] = {}
    for tid in ratio_sel:
        rows = np.flatnonzero(data.groups == tid)
        threshold_sel |= selections_from_proba([data.index[i] for i in rows], proba[rows], ratio, float(thresholds[rows[0]]))
    return {
        "folds": folds,
        "ratio": evaluate_selections(ratio_sel, gold, by_id),
        "threshold": evaluate_selections(threshold_sel, gold, by_id),
        "proba": proba,
    }


def training_stats(data: StepDataset, labels: Mapping[str, TrajectoryLabels]) -> dict[str, Any]:
    envs = Counter(t.env for t in data.trajectories)
    cats = Counter(c.category for t in data.trajectories for c in labels[t.id].critical)
    return {
        "trajectories": len(data.trajectories),
        "steps": int(len(data.y)),
        "critical_steps": int(data.y.sum()),
        "envs": dict(sorted(envs.items())),
        "categories": dict(sorted(cats.items())),
    }


def train_distilled(
    trajectories: Sequence[Trajectory],
    labels: Mapping[str, TrajectoryLabels],
    out_dir: str | Path | None,
    features: FeatureConfig | None = None,
    classifier: str = "hgb",
    folds: int = 5,
    ratio: float = DEFAULT_RATIO,
    device: str | None = None,
    cache: str | Path | None = "default",
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Cross-validate (folds >= 2), fit on every labeled trajectory, save to `out_dir` (if given).

    Returns the report: training data stats, CV metrics (without per-row probabilities), the
    model (as `DistilledModel`, under "model") and where it was saved.
    """
    if out_dir is not None:
        check_replaceable_dir(out_dir, MODEL_KIND)  # fail before training, not after
    extractor = extractor or FeatureExtractor(features, device=device, cache=cache)
    data = build_dataset(extractor, trajectories, labels)
    if len(data.y) == 0 or data.y.sum() == 0 or data.y.sum() == len(data.y):
        raise InputError("the labels need both critical and non-critical steps to train on")
    params = {"classifier": classifier, "ratio": ratio, "random_state": seed}
    report: dict[str, Any] = {"training_data": training_stats(data, labels), "classifier": classifier}
    if folds >= 2:
        cv = cross_validate(data, labels, folds, **params)
        cv.pop("proba")
        report["cv"] = cv
    clf = StepClassifier(**params).fit(data.X, data.y, groups=data.groups)
    card = {"training_data": report["training_data"], "cv": report.get("cv", {}), "versions": versions(),
            # so that `compare` can tell when it is asked to score the model on its own training data
            "training_ids": sorted(str(g) for g in set(data.groups))}
    model = DistilledModel(clf, extractor.config, extractor.feature_names(), card)
    report["threshold"] = clf.threshold_
    report["model"] = model
    if out_dir is not None:
        report["out_dir"] = str(save_model(model, out_dir))
    return report
