"""Training the distilled selector: repeated grouped cross-validation, then a final fit on all labels.

`train_distilled` is what `critstep distill` runs; the demo, `compare` and the benchmarks call
it (or `cross_validate`) directly. `cross_validate` is the honest estimate: folds are whole
trajectories (stratified by env, so every fold sees every env), and the calibration, threshold,
count scale and default mode of each fold's model come from inner folds of its training part only.
With `repeats` > 1 the split is redrawn with other seeds and the spread over repeats is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critstep.distill.dataset import StepDataset, build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.persistence import MODEL_KIND, DistilledModel, TrainingRows, save_model, versions
from critstep.distill.policy import MODES, SelectionPolicy
from critstep.errors import InputError
from critstep.io import check_replaceable_dir
from critstep.labels import TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection
from critstep.trajectory import Trajectory

# "default" = each fold model's own choice of mode (what `critstep select` does with no flag)
CV_MODES = ("default", *MODES)


def selections_from_proba(
    index: Sequence[tuple[str, int]],
    proba: np.ndarray,
    ratio: float = DEFAULT_RATIO,
    policy: SelectionPolicy | None = None,
    mode: str = "ratio",
) -> dict[str, Selection]:
    """Per trajectory, the selection `policy` makes in `mode` (without a policy: the top of the
    cap), with the probabilities as scores."""
    policy = policy or SelectionPolicy()
    rows: dict[str, list[int]] = {}
    for i, (tid, _) in enumerate(index):
        rows.setdefault(tid, []).append(i)
    return {tid: Selection(tid, policy.select(proba[idx], ratio, mode), scores=[float(v) for v in proba[idx]]) for tid, idx in rows.items()}


def cv_splits(envs: Sequence[str], folds: int, repeats: int = 1, seed: int = 0) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(repeat, train, test) trajectory indices: `repeats` shuffled k-fold splits stratified by env
    (envs with fewer trajectories than folds are pooled), repeat r shuffled with seed + r."""
    from sklearn.model_selection import StratifiedKFold

    counts = Counter(envs)
    strata = np.array([e if counts[e] >= folds else "(small envs)" for e in envs])
    if Counter(strata).most_common()[-1][1] < folds:
        strata[:] = "all"  # too few to stratify at all
    out = []
    for r in range(repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
        out += [(r, train, test) for train, test in splitter.split(np.zeros(len(envs)), strata)]
    return out


def fold_models(
    data: StepDataset, folds: int, repeats: int = 1, seed: int = 0, make: Callable[[], Any] = StepClassifier,
) -> Iterator[tuple[int, Any, np.ndarray]]:
    """Per fold of `cv_splits` over the trajectories of `data`: (repeat, a `make()` model fitted on
    the other folds' rows, the indices of the fold's own trajectories, which it never saw)."""
    rows_of = {t.id: np.flatnonzero(data.groups == t.id) for t in data.trajectories}
    for r, train, test in cv_splits([t.env for t in data.trajectories], folds, repeats, seed):
        train_rows = np.concatenate([rows_of[data.trajectories[i].id] for i in train])
        yield r, make().fit(data.X[train_rows], data.y[train_rows], groups=data.groups[train_rows], categories=data.categories[train_rows]), test


def cross_validate(
    data: StepDataset,
    labels: Mapping[str, TrajectoryLabels],
    folds: int = 5,
    ratio: float = DEFAULT_RATIO,
    repeats: int = 1,
    seed: int = 0,
    progress: bool = False,
    make: Callable[[], Any] | None = None,
    **classifier: Any,
) -> dict[str, Any]:
    """Repeated grouped k-fold CV: per mode, the full metrics of the first repeat and the spread
    (F1, macro F1 over envs, per-env F1) over all repeats; "proba" and "selections" (per mode)
    hold the first repeat's out-of-fold probabilities per row and selections per trajectory.

    `make` builds the model of each fold (default: a `StepClassifier` with `classifier`'s
    parameters); it must fit with groups and categories and carry a `policy_`."""
    import sys

    from tqdm import tqdm

    n_groups = len(data.trajectories)
    if n_groups < folds:
        raise InputError(f"{n_groups} labeled trajectories: too few for {folds}-fold cross-validation")
    classifier.setdefault("ratio", ratio)
    classifier.setdefault("random_state", seed)
    make = make or (lambda: StepClassifier(**classifier))
    rows_of = {t.id: np.flatnonzero(data.groups == t.id) for t in data.trajectories}
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in CV_MODES}
    chosen: Counter[str] = Counter()
    first_proba = np.zeros(len(data.y))
    selections: dict[str, dict[str, Selection]] = {m: {} for m in CV_MODES}
    first_selections: dict[str, dict[str, Selection]] = {}
    models = tqdm(fold_models(data, folds, repeats, seed, make), total=folds * repeats, desc="cross-validation", unit="fold",
                  disable=not progress, file=sys.stderr)
    for k, (r, clf, test) in enumerate(models):
        chosen[clf.policy_.mode] += 1
        for i in test:
            t = data.trajectories[i]
            rows = rows_of[t.id]
            p = clf.predict_proba(data.X[rows])[:, 1]
            if r == 0:
                first_proba[rows] = p
            for mode in CV_MODES:
                steps = clf.policy_.select(p, ratio, None if mode == "default" else mode)
                selections[mode][t.id] = Selection(t.id, steps, scores=[float(v) for v in p])
        if (k + 1) % folds == 0:  # a repeat is complete
            for mode in CV_MODES:
                runs[mode].append(evaluate_selections(selections[mode], gold, by_id))
            first_selections = first_selections or selections
            selections = {m: {} for m in CV_MODES}
    out: dict[str, Any] = {"folds": folds, "repeats": repeats, "default_mode_chosen": dict(chosen), "proba": first_proba,
                           "selections": first_selections}
    for mode in CV_MODES:
        out[mode] = runs[mode][0] | {"spread": spread(runs[mode])}
    return out


def spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and range over repeats of micro F1, macro F1 and per-env F1."""

    def stats(values: list[float]) -> dict[str, float]:
        v = np.asarray(values, dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}

    out = {"repeats": len(runs), "f1": stats([m["f1"] for m in runs])}
    if all(m.get("macro_f1") is not None for m in runs):
        out["macro_f1"] = stats([m["macro_f1"] for m in runs])
    out["per_env_f1"] = {e: stats([m["per_env"][e]["f1"] for m in runs]) for e in runs[0]["per_env"]}
    return out


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
    repeats: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-validate (folds >= 2), fit on every labeled trajectory, save to `out_dir` (if given).

    Returns the report: training data stats, CV metrics (without per-row probabilities), the
    model (as `DistilledModel`, under "model") and where it was saved.
    """
    if out_dir is not None:
        check_replaceable_dir(out_dir, MODEL_KIND)  # fail before training, not after
    extractor = extractor or FeatureExtractor(features, device=device, cache=cache, progress=progress)
    data = build_dataset(extractor, trajectories, labels)
    if len(data.y) == 0 or data.y.sum() == 0 or data.y.sum() == len(data.y):
        raise InputError("the labels need both critical and non-critical steps to train on")
    params = {"classifier": classifier, "ratio": ratio, "random_state": seed}
    report: dict[str, Any] = {"training_data": training_stats(data, labels), "classifier": classifier}
    if folds >= 2:
        cv = cross_validate(data, labels, folds, repeats=repeats, seed=seed, progress=progress, **params)
        cv.pop("proba")
        cv.pop("selections")
        report["cv"] = cv
    clf = StepClassifier(**params).fit(data.X, data.y, groups=data.groups, categories=data.categories)
    card = {"training_data": report["training_data"], "cv": report.get("cv", {}), "versions": versions(),
            # so that `compare` and `evaluate` can tell when the model is scored on its own training data
            "training_ids": sorted(str(g) for g in set(data.groups))}
    model = DistilledModel(clf, extractor.config, extractor.feature_names(), card, TrainingRows.of(data, 1.0))
    report["policy"] = clf.policy_.to_dict()
    report["model"] = model
    if out_dir is not None:
        report["out_dir"] = str(save_model(model, out_dir))
    return report
