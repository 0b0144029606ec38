"""`critstep distill --base`: refitting a model with a new env's labels, again and again, and what its card says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from critstep.distill.adapt import ADAPT_WEIGHT, adapt_distilled, env_cuts, refit
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig
from critstep.distill.persistence import TrainingRows, load_model
from critstep.distill.policy import best_threshold
from critstep.distill.train import train_distilled
from critstep.errors import InputError, ModelError
from critstep.formats import read_trajectories
from critstep.labels import read_labels
from critstep.selection import CATEGORIES

STRUCTURAL = FeatureConfig(groups=("structural", "progress"))


@pytest.fixture(scope="module")
def envs(shared: Path) -> dict[str, tuple[list, dict]]:
    """Per env, 12 labeled seed trajectories (alfworld, tau-airline, qa-search)."""
    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", corpus)
    out = {}
    for env in ("alfworld", "tau-airline", "qa-search"):
        ts = [t for t in corpus if t.id in labels and t.env == env][:12]
        out[env] = (ts, {t.id: labels[t.id] for t in ts})
    return out


@pytest.fixture(scope="module")
def base(envs, tmp_path_factory) -> Path:
    """A model trained on alfworld only."""
    d = tmp_path_factory.mktemp("base") / "m"
    ts, labels = envs["alfworld"]
    train_distilled(ts, labels, d, features=STRUCTURAL, folds=0, cache=None)
    return d


def test_a_new_env_adds_its_rows_weighted_and_gets_its_own_cut(envs, base: Path, tmp_path: Path) -> None:
    all_tau, tau_labels = envs["tau-airline"]
    ts, labels = all_tau[:10], {t.id: tau_labels[t.id] for t in all_tau[:10]}
    report = adapt_distilled(base, ts, labels, tmp_path / "a", cache=None)
    before, adapted = load_model(base), load_model(tmp_path / "a")
    rows, old = adapted.training_rows(), before.training_rows()
    new = rows.envs == "tau-airline"
    assert len(rows.y) == len(old.y) + sum(t.n_steps for t in ts)  # added: no base row has these ids
    assert np.all(rows.weight[new] == ADAPT_WEIGHT) and np.all(rows.weight[~new] == 1.0)
    assert np.array_equal(rows.X[~new], old.X) and set(rows.groups[new]) == set(labels)
    # the new rows carry the teacher's categories, and the refit learns them as classes
    assert np.array_equal(rows.categories[~new], old.categories) and sorted(rows.categories[new & (rows.y == 1)]) == sorted(
        1 + CATEGORIES.index(c.category) for t in ts for c in labels[t.id].critical)
    assert adapted.classifier.estimator_.classes_.tolist() == sorted(set(rows.categories.tolist()))
    assert report["envs"]["tau-airline"]["adapted"] and set(adapted.policy.env_thresholds) == {"tau-airline"}
    (step,) = adapted.card["adaptations"]
    assert step["refit"].startswith(f"{len(rows.y)} rows: {len(old.y)} kept from the base, {int(new.sum())} new") and "replacing" not in step["refit"]
    assert "Adaptation 1" in (tmp_path / "a" / "README.md").read_text()
    # adapting the adapted model again: its rows stay, the earlier env's cut is tuned again, the history grows
    qa, qa_labels = envs["qa-search"]
    two = {t.id: qa_labels[t.id] for t in qa[:2]}  # too few for a cut of its own, but in the refit
    report = adapt_distilled(tmp_path / "a", qa[:2], two, tmp_path / "b", cache=None)
    again = load_model(tmp_path / "b")
    assert len(again.training_rows().y) == len(rows.y) + sum(t.n_steps for t in qa[:2])
    assert not report["envs"]["qa-search"]["adapted"] and "in the refit" in report["envs"]["qa-search"]["why"]
    assert report["envs"]["tau-airline"]["trajectories"] == 0 and "tuned again" in report["envs"]["tau-airline"]["why"]
    assert set(again.policy.env_thresholds) == {"tau-airline"} and len(again.card["adaptations"]) == 2
    # two more trajectories of the env adapted before: too few for a first cut, but its cut is tuned again, and said so
    more = {t.id: tau_labels[t.id] for t in all_tau[10:]}
    report = adapt_distilled(tmp_path / "b", all_tau[10:], more, None, cache=None)
    assert report["envs"]["tau-airline"] | {"threshold": None} == {"trajectories": 2, "adapted": True, "threshold": None,
                                                                   "why": "adapted before: its cut is tuned again with these labels"}
    assert report["model"].policy.env_thresholds["tau-airline"] == report["envs"]["tau-airline"]["threshold"]


def test_refitting_a_single_trajectory_is_one_line(envs, tmp_path: Path) -> None:
    ts, labels = envs["alfworld"]
    model = train_distilled(ts, labels, None, features=STRUCTURAL, folds=0, cache=None)["model"]
    one = model.training_rows().without(set(labels) - {ts[0].id})
    with pytest.raises(InputError, match="at least 2 trajectories"):
        refit(model.classifier, one.without({ts[0].id}), one)


def test_adapting_with_the_bases_own_trajectories_replaces_their_rows(envs, base: Path, tmp_path: Path) -> None:
    ts, labels = envs["alfworld"]
    adapt_distilled(base, ts[:4], {t.id: labels[t.id] for t in ts[:4]}, tmp_path / "a", cache=None)
    rows, old = load_model(tmp_path / "a").training_rows(), load_model(base).training_rows()
    mine = np.isin(rows.groups, [t.id for t in ts[:4]])
    assert len(rows.y) == len(old.y) and np.all(rows.weight[mine] == ADAPT_WEIGHT) and np.all(rows.weight[~mine] == 1.0)
    assert "replacing the base's" in load_model(tmp_path / "a").card["adaptations"][0]["refit"]


def test_leave_one_out_cuts_never_see_their_own_trajectory() -> None:
    """Three trajectories whose best cuts differ: each one's cut is the best of the other two's."""
    groups = np.repeat(["a", "b", "c"], 10)
    y = np.tile((np.arange(10) < 2).astype(int), 3)
    rows = TrainingRows(np.zeros((30, 1)), y, groups, np.full(30, "e"), np.ones(30), 3 * y)
    clf = StepClassifier()
    p = np.tile(np.linspace(0.9, 0.0, 10), 3)
    p[20:] = np.linspace(0.3, 0.0, 10)  # "c" would want a low cut
    clf.oof_proba_ = p
    cut, loo = env_cuts(clf, rows, "e", 0.3, held_out={"a", "c"})
    a, b, c = p[:10], p[10:20], p[20:]
    gold = [y[:10]] * 3
    assert set(loo) == {"a", "c"} and cut == best_threshold([a, b, c], gold, 0.3)
    assert loo["a"] == best_threshold([b, c], gold[:2], 0.3) and loo["c"] == best_threshold([a, b], gold[:2], 0.3)
    assert loo["a"] != loo["c"]  # "c" alone wants a cut below its low scores: the two estimates differ


def test_a_base_without_inner_folds_or_with_one_class_fails_in_one_line(envs, base: Path) -> None:
    model = load_model(base)
    no_folds = StepClassifier(calibration_folds=0)
    ts, labels = envs["tau-airline"]
    new = TrainingRows(np.zeros((3, model.training_rows().X.shape[1])), np.array([1, 1, 1]), np.array(["x"] * 3), np.array(["e"] * 3),
                       np.ones(3), np.array([3, 3, 3]))
    with pytest.raises(ModelError, match="without inner folds"):
        refit(no_folds, model.training_rows(), new)
    all_critical = TrainingRows(model.training_rows().X, np.ones_like(model.training_rows().y), model.training_rows().groups,
                                model.training_rows().envs, model.training_rows().weight, np.full(len(model.training_rows().y), 3))
    with pytest.raises(InputError, match="refitting the base model with these labels failed"):
        refit(model.classifier, all_critical, new)
