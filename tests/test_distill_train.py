"""Training, saving and loading the distilled selector (structural features: no model download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.persistence import load_model
from critstep.distill.policy import SelectionPolicy, fit_policy
from critstep.distill.train import train_distilled
from critstep.errors import InputError, ModelError
from critstep.formats import read_trajectories
from critstep.labels import CriticalStep, TrajectoryLabels, read_labels
from critstep.selection import CATEGORIES, step_cap
from critstep.selector import build_selector

STRUCTURAL = FeatureConfig(groups=("structural",))


@pytest.fixture(scope="module")
def seed(shared: Path) -> tuple[list, dict]:
    """The first 40 labeled trajectories of the shared seed set (every env represented)."""
    trajectories = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", trajectories)
    keep = dict(list(labels.items())[:40])
    return [t for t in trajectories if t.id in keep], keep


def test_policy_modes_respect_the_cap_and_keep_one() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.05, 0.3, 0.4, 0.5])
    policy = SelectionPolicy(mode="threshold", threshold=0.75, count_scale=1.0)
    assert policy.select(scores, 0.3, "ratio") == [0, 2, 3]  # cap floor(10*0.3) = 3
    assert policy.select(scores, 0.3) == [0, 2]  # the default mode: threshold below the cap
    assert SelectionPolicy(threshold=0.1).select(scores, 0.3) == [0, 2, 3]  # never above the cap
    assert SelectionPolicy(threshold=0.99).select(scores, 0.3) == [0]  # at least one
    assert policy.select(scores, 0.3, "count") == [0, 2, 3]  # round(4.55) = 5, capped at 3
    assert SelectionPolicy(count_scale=0.5).select(scores, 0.5, "count") == [0, 2]  # round(0.5 * 4.55) = 2
    assert policy.select(np.array([0.2, 0.1]), 0.3) == [0]
    assert policy.select(np.array([]), 0.3) == []


def test_fit_policy_finds_the_separating_cut_and_chooses_the_better_mode() -> None:
    rng = np.random.default_rng(0)
    proba, gold = [], []
    for _ in range(30):  # two clearly critical steps of 10: both a cut and a count can find them
        p = rng.uniform(0.0, 0.3, 10)
        p[:2] = rng.uniform(0.7, 0.9, 2)
        proba.append(p)
        gold.append(np.arange(10) < 2)
    policy = fit_policy(proba, gold, ratio=0.3)
    assert 0.3 <= policy.threshold <= 0.7 and policy.fit_f1["threshold"] == 1.0
    assert policy.fit_f1["ratio"] < 1.0  # filling the cap picks a third step
    assert policy.mode == max(("threshold", "count"), key=lambda m: policy.fit_f1[m])
    # a count helps when one trajectory's critical steps score low but the number is right
    low = [p * 0.5 for p in proba]
    assert fit_policy(low, gold, ratio=0.3).fit_f1["count"] == 1.0


def test_estimator_contract_and_validation() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((200, 4))
    y = (X[:, 0] > 0.7).astype(int)
    groups = np.repeat(np.arange(20), 10)
    clf = StepClassifier().fit(X, y, groups=groups)
    p = clf.predict_proba(X)
    assert p.shape == (200, 2) and np.allclose(p.sum(1), 1) and (p[y == 1, 1].mean() > p[y == 0, 1].mean() + 0.3)
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(ValueError, match="features"):
        clf.predict_proba(X[:, :3])
    with pytest.raises(ValueError):
        StepClassifier().fit(X, np.zeros(200, dtype=int))  # one class only
    with pytest.raises(ValueError):
        StepClassifier().fit(np.full((200, 4), np.inf), y)


def test_the_teachers_categories_are_learned_as_classes_and_scored_as_one_minus_not_critical() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((300, 4))
    codes = np.where(X[:, 0] > 0.8, 1, np.where(X[:, 1] > 0.8, 3, 0))  # plans and actions: two unlike kinds of critical step
    y = (codes > 0).astype(int)
    groups = np.repeat(np.arange(30), 10)
    clf = StepClassifier().fit(X, y, groups=groups, categories=codes)
    assert clf.estimator_.classes_.tolist() == [0, 1, 3]
    p0 = clf.estimator_.predict_proba(X)[:, 0]
    assert np.allclose(clf.decision_function(X), np.log((1 - p0) / p0))
    p = clf.predict_proba(X)[:, 1]
    assert p[y == 1].mean() > p[y == 0].mean() + 0.5 and clf.oof_proba_.shape == (300,)
    assert StepClassifier(targets="binary").fit(X, y, groups=groups, categories=codes).estimator_.classes_.tolist() == [0, 1]
    assert StepClassifier().fit(X, y, groups=groups).estimator_.classes_.tolist() == [0, 1]  # no categories: critical or not
    for bad in (codes[:10], codes.astype(float), np.where(y == 1, 0, 2), np.where(y == 1, 5, 0), -codes):
        with pytest.raises(ValueError, match="categories must be"):
            StepClassifier().fit(X, y, groups=groups, categories=bad)
    with pytest.raises(ValueError, match="targets must be one of"):
        StepClassifier(targets="kinds").fit(X, y, groups=groups)


def test_sample_weight_moves_the_fit_toward_the_weighted_rows() -> None:
    """What `distill --base` relies on: a few heavily weighted rows whose rule contradicts the rest win."""
    rng = np.random.default_rng(0)
    X = rng.random((400, 3))
    y = (X[:, 0] > 0.7).astype(int)
    y[:40] = (X[:40, 1] > 0.7).astype(int)  # the "new env": another feature decides
    groups = np.repeat(np.arange(40), 10)
    weight = np.ones(400)
    weight[:40] = 20.0
    plain = StepClassifier().fit(X, y, groups=groups)
    weighted = StepClassifier().fit(X, y, groups=groups, sample_weight=weight)
    probe = np.array([[0.1, 0.95, 0.5], [0.95, 0.1, 0.5]])
    assert weighted.predict_proba(probe)[0, 1] > plain.predict_proba(probe)[0, 1] + 0.1
    assert weighted.oof_proba_.shape == (400,) and np.all((weighted.oof_proba_ >= 0) & (weighted.oof_proba_ <= 1))
    with pytest.raises(ValueError, match="sample_weight has shape"):
        StepClassifier().fit(X, y, groups=groups, sample_weight=weight[:10])
    for bad in (np.full(400, np.nan), -weight, np.zeros(400)):
        with pytest.raises(ValueError, match="finite, non-negative and not all zero"):
            StepClassifier().fit(X, y, groups=groups, sample_weight=bad)
    weighted.fit(X[:50], y[:50], groups=np.zeros(50))  # one trajectory: no inner folds, so no out-of-fold probabilities
    assert not hasattr(weighted, "oof_proba_")  # never the previous fit's


def test_fit_save_load_round_trip_scores_identically(seed, tmp_path: Path) -> None:
    trajectories, labels = seed
    report = train_distilled(trajectories, labels, tmp_path / "model", features=STRUCTURAL, folds=2, repeats=2, cache=None)
    cv = report["cv"]
    assert cv["folds"] == 2 and cv["repeats"] == 2 and 0.2 < cv["ratio"]["f1"] <= 1.0 and cv["ratio"]["auroc"] > 0.6
    assert set(cv["default_mode_chosen"]) <= {"threshold", "count"} and sum(cv["default_mode_chosen"].values()) == 4
    spread = cv["default"]["spread"]
    assert spread["repeats"] == 2 and spread["f1"]["min"] <= cv["default"]["f1"] <= spread["f1"]["max"]
    assert set(spread["per_env_f1"]) == {t.env for t in trajectories}
    assert report["training_data"]["trajectories"] == 40
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert files == {"model.skops", "training.npz", "model.json", "README.md", ".critstep-output.json"}  # no pickle anywhere
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["format_version"] == 4 and card["features"]["groups"] == ["structural"] and "versions" in card["card"]
    assert card["policy"]["mode"] == report["policy"]["mode"] in ("threshold", "count")
    assert "Cross-validated" in (tmp_path / "model" / "README.md").read_text()

    X, _ = FeatureExtractor(STRUCTURAL, cache=None).transform(trajectories)
    before = report["model"].classifier.predict_proba(X)[:, 1]
    loaded = load_model(tmp_path / "model")
    assert np.array_equal(loaded.classifier.predict_proba(X)[:, 1], before)
    assert loaded.policy == report["model"].policy and loaded.classifier.calibration_ == report["model"].classifier.calibration_
    # the training rows come back as they were fitted on (for `distill --base`), read without pickle
    rows = loaded.training_rows()
    assert np.array_equal(rows.X, X) and rows.y.sum() == sum(len(labels[t.id].steps) for t in trajectories)
    assert set(rows.groups) == {t.id for t in trajectories} and np.all(rows.weight == 1.0)
    assert np.array_equal(rows.categories, report["model"].training_rows().categories) and set(rows.categories[rows.y == 1]) == {
        1 + CATEGORIES.index(c.category) for t in trajectories for c in labels[t.id].critical}
    assert len(loaded.classifier.estimator_.classes_) > 2  # the teacher's categories were the classes
    assert list(rows.envs) == [t.env for t in trajectories for _ in range(t.n_steps)]

    selector = build_selector("distilled", model_dir=tmp_path / "model", cache=None)
    scores = selector.score(trajectories)
    assert np.allclose(np.concatenate([scores[t.id] for t in trajectories]), before)
    default = selector.select(trajectories, ratio=0.3)
    for t in trajectories:  # the default is the model's own mode
        assert default[t.id].steps == loaded.policy.select(scores[t.id], 0.3, loaded.policy.mode)
    for mode in ("threshold", "count", "ratio"):
        selector = build_selector("distilled", model_dir=tmp_path / "model", cache=None, mode=mode)
        for t, sel in zip(trajectories, selector.select(trajectories, ratio=0.3).values(), strict=True):
            assert 1 <= len(sel.steps) <= step_cap(t.n_steps, 0.3) and len(sel.scores) == t.n_steps
            assert sel.steps == loaded.policy.select(scores[t.id], 0.3, mode)


def test_bad_labels_are_rejected(seed, tmp_path: Path) -> None:
    trajectories, labels = seed
    first = next(iter(labels.values()))
    unknown = dict(labels) | {"nope": TrajectoryLabels("nope", 3, [CriticalStep(0, "critical_action")])}
    with pytest.raises(InputError, match="unknown trajectory id 'nope'"):
        train_distilled(trajectories, unknown, None, features=STRUCTURAL, folds=0, cache=None)
    bad = dict(labels) | {first.id: TrajectoryLabels(first.id, first.n_steps, [CriticalStep(first.n_steps + 2, "critical_action")])}
    with pytest.raises(InputError, match="outside"):
        train_distilled(trajectories, bad, None, features=STRUCTURAL, folds=0, cache=None)
    with pytest.raises(InputError, match="too few"):
        train_distilled(trajectories[:3], {t.id: labels[t.id] for t in trajectories[:3]}, None, features=STRUCTURAL, folds=5, cache=None)


def test_dataset_targets_match_labels(seed) -> None:
    trajectories, labels = seed
    data = build_dataset(FeatureExtractor(STRUCTURAL, cache=None), trajectories, labels)
    assert len(data.y) == sum(t.n_steps for t in trajectories)
    assert data.y.sum() == sum(len(lab.critical) for lab in labels.values())


def test_loading_refuses_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a distilled model"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format_version": 99}')
    (tmp_path / "model.skops").write_bytes(b"")
    with pytest.raises(ModelError, match="format"):
        load_model(tmp_path)
