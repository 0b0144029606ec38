"""Adapting a trained distilled model to a new environment with a few labeled trajectories.

A model trained on other environments ranks the steps of a new one only roughly: what a critical
step looks like there (its actions, its outcomes) is partly new. Retraining from scratch would
need the original training data, which a shipped model does not carry; recalibrating alone was
measured to help nothing (benchmarks/distill_transfer.py). So the model is *continued*: per env
of the new labels, a small gradient-boosted regression ensemble (the "adapter") is fitted to the
base model's Newton working response on those labels, z = (y - p) / (p (1 - p)) with weights
p (1 - p), which is one boosting step of the same logistic loss the base model was trained on.
Its output is added to the base model's raw score for trajectories of that env only; other envs
are scored as before, and the classifier itself is unchanged. Adapting an env again replaces its
adapter with one fitted on the labels given then.

The env also gets its own cut (threshold mode): a new env's share of critical steps is its own
(ScienceWorld's is half of tau-bench's), and the cut learned elsewhere does not carry over. The
cut is tuned on leave-one-out probabilities: each labeled trajectory scored by an adapter fitted
on the *other* labeled trajectories of its env, never by one that saw its labels.

The report estimates the adapted agreement the same way: each labeled trajectory is selected
from its leave-one-out probabilities with a cut tuned on the other trajectories' ones, next to
the base model's agreement on the same trajectories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from copy import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from critstep.distill.dataset import build_dataset
from critstep.distill.features import FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.persistence import MODEL_KIND, DistilledModel, load_model, save_model, versions
from critstep.distill.policy import best_threshold, count_for
from critstep.errors import InputError
from critstep.io import check_replaceable_dir
from critstep.labels import TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection, select_top
from critstep.trajectory import Trajectory

MIN_TRAJECTORIES = 3  # fewer labeled trajectories of an env than this teach an adapter nothing reliable


def fit_adapter(raw: np.ndarray, X: np.ndarray, y: np.ndarray, random_state: int = 0) -> Any:
    """A small regression ensemble on the working response of base raw scores `raw` for labels `y`.

    Fixed settings (shallow trees, 20-step leaves, 60 rounds at 0.1): with a few hundred steps
    there is nothing to tune them on, and they were not tuned on the reported figures.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    p = 1.0 / (1.0 + np.exp(-raw))
    weight = np.clip(p * (1.0 - p), 1e-3, None)
    target = np.clip((y - p) / weight, -4.0, 4.0)
    adapter = HistGradientBoostingRegressor(max_iter=60, learning_rate=0.1, max_leaf_nodes=7, min_samples_leaf=10,
                                            l2_regularization=1.0, early_stopping=False, random_state=random_state)
    return adapter.fit(X, target, sample_weight=weight)


def adapt_env(
    raw: Sequence[np.ndarray], X: Sequence[np.ndarray], y: Sequence[np.ndarray], calibrate: Callable[[np.ndarray], np.ndarray],
    ratio: float = DEFAULT_RATIO,
) -> tuple[Any, float, list[np.ndarray], list[float]]:
    """Adapt to one env from its labeled trajectories (per trajectory: base raw scores, features,
    0/1 labels). Returns the adapter fitted on all of them, the env's cut tuned on leave-one-out
    probabilities, those probabilities, and for each trajectory the cut tuned without it."""
    loo = []
    for i in range(len(raw)):
        others = [j for j in range(len(raw)) if j != i]
        adapter = fit_adapter(np.concatenate([raw[j] for j in others]), np.vstack([X[j] for j in others]), np.concatenate([y[j] for j in others]))
        loo.append(calibrate(raw[i] + adapter.predict(X[i])))
    cuts = [best_threshold([loo[j] for j in range(len(raw)) if j != i], [y[j] for j in range(len(raw)) if j != i], ratio) for i in range(len(raw))]
    adapter = fit_adapter(np.concatenate(raw), np.vstack(X), np.concatenate(y))
    return adapter, best_threshold(loo, y, ratio), loo, cuts


def adapt_distilled(
    base_dir: str | Path,
    trajectories: Sequence[Trajectory],
    labels: Mapping[str, TrajectoryLabels],
    out_dir: str | Path | None,
    ratio: float = DEFAULT_RATIO,
    device: str | None = None,
    cache: str | Path | None = "default",
    progress: bool = False,
) -> dict[str, Any]:
    """Adapt the model at `base_dir` to every env of `labels` that has enough of them and save
    the adapted model to `out_dir` (if given). Returns the report (per env: trajectories, the
    base model's F1 in its default mode and the leave-one-out F1 after adaptation) and the
    model under "model"."""
    if out_dir is not None:
        check_replaceable_dir(out_dir, MODEL_KIND)
    base = load_model(base_dir)
    extractor = FeatureExtractor(base.features, device=device, cache=cache, progress=progress)
    data = build_dataset(extractor, trajectories, labels)
    if len(data.y) == 0:
        raise InputError("no labeled trajectory with steps to adapt to")
    # "before" is the model as it is (with any adapter it already has); a new adapter is fitted on
    # the classifier alone and replaces an earlier one of the same env.
    raw_now = base.raw_scores(data.X, [t.env for t in data.trajectories for _ in range(t.n_steps)])
    raw_all = base.classifier.decision_function(data.X)
    rows = {t.id: np.flatnonzero(data.groups == t.id) for t in data.trajectories}
    by_env: dict[str, list[Trajectory]] = {}
    for t in data.trajectories:
        by_env.setdefault(t.env, []).append(t)
    policy = replace(base.policy, env_thresholds=dict(base.policy.env_thresholds))
    adapters = dict(base.adapters)
    report: dict[str, Any] = {"base": str(base_dir), "envs": {}}
    before: dict[str, Selection] = {}
    after: dict[str, Selection] = {}
    for env, ts in sorted(by_env.items()):
        for t in ts:
            p = base.calibrate(raw_now[rows[t.id]])
            before[t.id] = Selection(t.id, base.policy.select(p, ratio, env=env), scores=[float(v) for v in p])
        positives = int(sum(data.y[rows[t.id]].sum() for t in ts))
        if len(ts) < MIN_TRAJECTORIES or positives == 0 or positives == sum(t.n_steps for t in ts):
            report["envs"][env] = {"trajectories": len(ts), "adapted": False,
                                   "why": f"needs >= {MIN_TRAJECTORIES} labeled trajectories with critical and other steps"}
            after |= {t.id: before[t.id] for t in ts}
            continue
        adapter, cut, loo, cuts = adapt_env([raw_all[rows[t.id]] for t in ts], [data.X[rows[t.id]] for t in ts],
                                            [data.y[rows[t.id]] for t in ts], base.calibrate, ratio)
        for t, p, c in zip(ts, loo, cuts, strict=True):
            after[t.id] = Selection(t.id, select_top(p, count_for(p, "threshold", ratio, c, 1.0)), scores=[float(v) for v in p])
        adapters[env], policy.env_thresholds[env] = adapter, cut
        report["envs"][env] = {"trajectories": len(ts), "adapted": True, "threshold": cut}
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    report["before"] = evaluate_selections(before, gold, by_id)
    report["after_leave_one_out"] = evaluate_selections(after, gold, by_id)
    overlap = set(base.card.get("training_ids", [])) & set(rows)
    if overlap:
        report["warning"] = f"{len(overlap)} of these trajectories are training data of the base model: its 'before' F1 is in-sample"
    card = dict(base.card)
    card["training_ids"] = sorted(set(card.get("training_ids", [])) | set(rows))
    card["adapted_from"] = {
        "base": Path(base_dir).name,
        "labels": dict(sorted(Counter(t.env for t in data.trajectories).items())),
        "adapted envs": ", ".join(f"{e} (cut {v['threshold']:.2f})" for e, v in report["envs"].items() if v["adapted"]) or "none",
        "F1 on the adaptation labels, base model": round(report["before"]["f1"], 4),
        "F1 on the adaptation labels, adapted (leave one trajectory out)": round(report["after_leave_one_out"]["f1"], 4),
        "versions": versions(),
    }
    clf = copy(base.classifier)
    clf.policy_ = policy
    model = DistilledModel(clf, base.features, base.feature_names, card, adapters)
    report["model"] = model
    if out_dir is not None:
        report["out_dir"] = str(save_model(model, out_dir))
    return report
