"""Adapting a trained distilled model to a new environment with a few labeled trajectories.

A model trained on other environments ranks the steps of a new one only roughly: what a critical
step looks like there (its actions, its outcomes) is partly new. A model directory carries the
feature rows its classifier was fitted on (training.npz), so adapting is a refit: the same
classifier with the same settings, fitted on those rows plus the new env's labeled trajectories,
each new step weighted `ADAPT_WEIGHT` times (a few trajectories would otherwise be lost among
thousands of rows; a scratch comparison of ranking quality on two of the draws
`benchmarks/distill_transfer.py` reports had weights 5 and 20 alike and 1 worse, and 10 was set
between them, not tuned further). It replaced a small boosted correction of the base model's
scores that left the classifier as it was: the refit agrees better with the teacher on the
left-out env at every point of that benchmark (the correction's figures are in its results file
as of commit ca224f7). Unlike the correction, a refit also moves the other envs' scores a little
(the calibration and the global cut are fitted again). Labeled trajectories the base was trained
on replace their rows.

Each adapted env gets its own cut (threshold mode): a new env's share of critical steps is its own
(ScienceWorld's is half of tau-bench's), and the cut learned elsewhere does not carry over. The cut
is tuned on the refit's out-of-fold probabilities of that env's trajectories (inner folds grouped by
trajectory: no trajectory is scored by a model that saw its labels). The report estimates the
adapted agreement the same way, each trajectory selected with a cut tuned on the others (the
two-parameter Platt calibration is fitted on all the out-of-fold scores, its own included; an env
too small for a cut of its own uses the global cut, tuned on all of them too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier, group_slices
from critstep.distill.features import FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.persistence import MODEL_KIND, DistilledModel, TrainingRows, load_model, save_model, versions
from critstep.distill.policy import best_threshold, count_for
from critstep.errors import InputError, ModelError
from critstep.io import check_replaceable_dir
from critstep.labels import TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection, select_top
from critstep.trajectory import Trajectory

ADAPT_WEIGHT = 10.0  # each labeled step of the adapted envs counts as this many of the base's
MIN_TRAJECTORIES = 3  # fewer labeled trajectories of an env than this give no cut worth keeping


def refit(
    classifier: StepClassifier, training: TrainingRows, new: TrainingRows, ratio: float = DEFAULT_RATIO
) -> tuple[StepClassifier, TrainingRows]:
    """`classifier`'s settings (with the cap `ratio`) fitted on `training` plus `new`, whose
    trajectories' old rows are dropped; the out-of-fold probabilities behind the cuts need inner folds."""
    if classifier.calibration_folds < 2:
        raise ModelError("the base model was fitted without inner folds (calibration_folds < 2): a refit could not tune its "
                         "cuts out of fold; retrain it with `critstep distill`")
    rows = training.without(set(new.groups.tolist())).plus(new)
    try:
        clf = StepClassifier(**(classifier.get_params() | {"ratio": ratio})).fit(rows.X, rows.y, groups=rows.groups, sample_weight=rows.weight,
                                                                                 categories=rows.categories)
    except ValueError as e:  # e.g. every step critical: one class
        raise InputError(f"refitting the base model with these labels failed: {e}") from None
    if not hasattr(clf, "oof_proba_"):
        raise InputError(f"refitting needs at least 2 trajectories in all (the base and these labels hold {len(set(rows.groups.tolist()))})")
    return clf, rows


def env_cuts(
    clf: StepClassifier, rows: TrainingRows, env: str, ratio: float = DEFAULT_RATIO, held_out: Collection[str] = ()
) -> tuple[float, dict[str, float]]:
    """The cut of `env` tuned on the refit's out-of-fold probabilities of its trajectories, and for
    each of its trajectories in `held_out` the cut tuned on the env's others (an honest estimate)."""
    slices = [i for i in group_slices(rows.groups) if rows.envs[i[0]] == env]
    proba = [clf.oof_proba_[i] for i in slices]
    gold = [rows.y[i] for i in slices]
    loo = {str(rows.groups[i[0]]): best_threshold(proba[:k] + proba[k + 1 :], gold[:k] + gold[k + 1 :], ratio)
           for k, i in enumerate(slices) if rows.groups[i[0]] in held_out}
    return best_threshold(proba, gold, ratio), loo


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
    """Refit the model at `base_dir` with `labels`, give every env of them that has enough its own
    cut, and save the adapted model to `out_dir` (if given). Returns the report (per env:
    trajectories, the base model's F1 in its default mode and the out-of-fold F1 after adaptation)
    and the model under "model"."""
    if out_dir is not None:
        check_replaceable_dir(out_dir, MODEL_KIND)
    base = load_model(base_dir)
    base_rows = base.training_rows()
    if base_rows is None:
        raise ModelError(f"{base_dir} carries no training rows (saved before model format 3), so it cannot be refitted; "
                         "retrain it with `critstep distill`, which saves them")
    extractor = FeatureExtractor(base.features, device=device, cache=cache, progress=progress)
    data = build_dataset(extractor, trajectories, labels)
    if len(data.y) == 0:
        raise InputError("no labeled trajectory with steps to adapt to")
    clf, rows = refit(base.classifier, base_rows, TrainingRows.of(data, ADAPT_WEIGHT), ratio)
    by_env: dict[str, list[Trajectory]] = {}
    for t in data.trajectories:
        by_env.setdefault(t.env, []).append(t)
    report: dict[str, Any] = {"base": str(base_dir), "envs": {}}
    own_cut = set(base.policy.env_thresholds)  # envs adapted before get their cut again: the model changed
    for env, ts in sorted(by_env.items()):
        positives = sum(len(labels[t.id].steps) for t in ts)
        if len(ts) >= MIN_TRAJECTORIES and 0 < positives < sum(t.n_steps for t in ts):
            own_cut.add(env)
            report["envs"][env] = {"trajectories": len(ts), "adapted": True}
        elif env in own_cut:
            report["envs"][env] = {"trajectories": len(ts), "adapted": True, "why": "adapted before: its cut is tuned again with these labels"}
        else:
            report["envs"][env] = {"trajectories": len(ts), "adapted": False,
                                   "why": f"in the refit, but no cut of its own: that needs >= {MIN_TRAJECTORIES} labeled trajectories "
                                          "with critical and other steps"}
    loo: dict[str, float] = {}
    for env in sorted(own_cut):
        clf.policy_.env_thresholds[env], cuts = env_cuts(clf, rows, env, ratio, held_out=set(data.groups.tolist()))
        loo |= cuts
        report["envs"].setdefault(env, {"trajectories": 0, "adapted": True, "why": "adapted before: its cut is tuned again"})
        report["envs"][env]["threshold"] = clf.policy_.env_thresholds[env]
    new_rows = {g: np.flatnonzero(rows.groups == g) for g in set(data.groups.tolist())}
    before: dict[str, Selection] = {}
    after: dict[str, Selection] = {}
    for t in data.trajectories:
        p = base.proba(data.X[data.groups == t.id])
        before[t.id] = Selection(t.id, base.policy.select(p, ratio, env=t.env), scores=[float(v) for v in p])
        q = clf.oof_proba_[new_rows[t.id]]
        steps = select_top(q, count_for(q, "threshold", ratio, loo[t.id], 1.0)) if t.id in loo else clf.policy_.select(q, ratio, env=t.env)
        after[t.id] = Selection(t.id, steps, scores=[float(v) for v in q])
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    report["before"] = evaluate_selections(before, gold, by_id)
    report["after_out_of_fold"] = evaluate_selections(after, gold, by_id)
    overlap = set(base.card.get("training_ids", [])) & set(by_id)
    if overlap:
        report["warning"] = f"{len(overlap)} of these trajectories are training data of the base model: its 'before' F1 is in-sample"
    replaced = int(np.isin(base_rows.groups, list(by_id)).sum())
    card = dict(base.card)
    card["training_ids"] = sorted(set(rows.groups.tolist()))
    card["adaptations"] = [*base.card.get("adaptations", []), {
        "base": Path(base_dir).resolve().name,
        "labels": ", ".join(f"{env} {n}" for env, n in sorted(Counter(t.env for t in data.trajectories).items())),
        "refit": f"{len(rows.y)} rows: {len(base_rows.y) - replaced} kept from the base, {len(data.y)} new weighted {ADAPT_WEIGHT:g}x"
                 + (f" (replacing the base's {replaced} rows of the same trajectories)" if replaced else ""),
        "envs with their own cut": ", ".join(f"{e} ({c:.2f})" for e, c in sorted(clf.policy_.env_thresholds.items())) or "none",
        "F1 on the adaptation labels, base model": round(report["before"]["f1"], 4),
        "F1 on the adaptation labels, adapted (out of fold)": round(report["after_out_of_fold"]["f1"], 4),
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
    }]
    model = DistilledModel(clf, base.features, base.feature_names, card, rows)
    report["model"] = model
    if out_dir is not None:
        report["out_dir"] = str(save_model(model, out_dir))
    return report
