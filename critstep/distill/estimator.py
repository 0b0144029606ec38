"""The step classifier: a scikit-learn estimator with calibrated probabilities and a learned selection policy.

`StepClassifier` wraps a histogram gradient-boosting model (or a logistic regression, for
comparison) and calibrates its scores with Platt scaling fitted on out-of-fold predictions,
grouped by trajectory so no trajectory informs its own calibration. The same out-of-fold
probabilities fit `policy_` (see `policy.py`): the threshold, the count scale, and which of the
two selection modes agrees best with the teacher. Tuning never sees the data it is scored on.

Given the teacher's categories, the base model learns them as classes (not critical, plan
creation, critical observation, critical action, self correction) and scores a step by
P(critical) = 1 - P(not critical): the critical class is a union of four kinds of step that look
nothing alike (a plan in words, a look that reveals the target, an action that changes the task
state), and one tree ensemble per kind separates them better than one ensemble for their union
(benchmarks/agreement.py, "gbm" against "gbm-binary").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from critstep.distill.policy import SelectionPolicy, fit_policy
from critstep.selection import CATEGORIES, DEFAULT_RATIO

CLASSIFIERS = ("hgb", "logreg")
TARGETS = ("categories", "binary")


def category_codes(categories: Sequence[str | None]) -> np.ndarray:
    """Class codes of steps: 0 for a step that is not critical (None), 1 + its index in
    `CATEGORIES` for a critical one."""
    return np.array([0 if c is None else 1 + CATEGORIES.index(c) for c in categories], dtype=int)


def make_base(classifier: str, random_state: int = 0) -> BaseEstimator:
    if classifier == "hgb":
        return HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=250,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            max_features=0.3,
            early_stopping=False,
            random_state=random_state,
        )
    if classifier == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    raise ValueError(f"unknown classifier {classifier!r} (choose from {', '.join(CLASSIFIERS)})")


def group_slices(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group (trajectory), in order of first appearance."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in np.argsort(first)]


class StepClassifier(ClassifierMixin, BaseEstimator):
    """Classifier of steps (classes 0 and 1 = critical) with Platt-calibrated `predict_proba`; given
    the teacher's categories, its base model learns them (see the module docstring).

    Parameters
    ----------
    classifier: "hgb" or "logreg".
    calibration_folds: folds for the out-of-fold scores behind calibration and `policy_`
        (grouped by the `groups` passed to `fit`: trajectory ids); 0 or 1 turns both off.
    ratio: the per-trajectory cap used when fitting `policy_`.
    targets: "categories" learns the teacher's categories as classes when `fit` is given them
        (P(critical) = 1 - P(not critical)); "binary" learns critical against the rest.

    After `fit`: `calibration_` (Platt a, b), `policy_` (a `SelectionPolicy`), `threshold_`
    (= `policy_.threshold`, what `predict` cuts at) and `oof_proba_`, the calibrated out-of-fold
    probability of each training row (what the policy was fitted on; not saved with the model).
    `sample_weight` weighs rows in the fits and the calibration, not in the policy, whose F1
    counts every trajectory alike.
    """

    def __init__(
        self, classifier: str = "hgb", calibration_folds: int = 3, ratio: float = DEFAULT_RATIO, random_state: int = 0,
        targets: str = "categories",
    ):
        self.classifier = classifier
        self.calibration_folds = calibration_folds
        self.ratio = ratio
        self.random_state = random_state
        self.targets = targets

    def fit(
        self, X: np.ndarray, y: Sequence[int], groups: Sequence[str] | None = None, sample_weight: Sequence[float] | None = None,
        categories: Sequence[int] | None = None,
    ) -> StepClassifier:
        """`categories` (optional): each row's class code (`category_codes`: 0 where y is 0, 1-4 the
        teacher's category where y is 1), learned as the classes when `targets` is "categories"."""
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        X, y = check_X_y(X, y, dtype=np.float64)
        X = validate_data(self, X, reset=True)
        self.classes_ = unique_labels(y)
        if not np.array_equal(self.classes_, [0, 1]):
            raise ValueError(f"StepClassifier needs both classes 0 and 1 in y, got {self.classes_.tolist()}")
        groups_arr = np.asarray(groups if groups is not None else np.arange(len(y)))
        if len(groups_arr) != len(y):
            raise ValueError(f"groups has {len(groups_arr)} entries for {len(y)} samples")
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight is not None and weight.shape != (len(y),):
            raise ValueError(f"sample_weight has shape {weight.shape} for {len(y)} samples")
        if weight is not None and (not np.isfinite(weight).all() or (weight < 0).any() or not weight.any()):
            raise ValueError("sample_weight must be finite, non-negative and not all zero")
        classes = y
        if categories is not None:
            codes = np.asarray(categories)
            if codes.shape != (len(y),) or codes.dtype.kind not in "iu":
                raise ValueError(f"categories must be {len(y)} integer codes, got {codes.dtype} {codes.shape}")
            if ((codes > 0) != (y == 1)).any() or codes.min() < 0 or codes.max() > len(CATEGORIES):
                raise ValueError(f"categories must be 0 where y is 0 and 1-{len(CATEGORIES)} where y is 1")
            if self.targets == "categories":
                classes = codes
        if hasattr(self, "oof_proba_"):
            del self.oof_proba_  # a refit without inner folds has none: never the previous fit's
        self.calibration_ = (1.0, 0.0)
        self.policy_ = SelectionPolicy()
        folds = min(self.calibration_folds, len(np.unique(groups_arr)))
        if folds >= 2:
            raw = np.zeros(len(y))
            splitter = GroupKFold(folds) if groups is not None else KFold(folds, shuffle=True, random_state=self.random_state)
            for train, test in splitter.split(X, y, groups_arr):
                if len(np.unique(y[train])) < 2:
                    raw[test] = 0.0
                    continue
                raw[test] = _critical_score(self._fit_base(X[train], classes[train], None if weight is None else weight[train]), X[test])
            platt = LogisticRegression(C=1e4).fit(raw.reshape(-1, 1), y, sample_weight=weight)
            self.calibration_ = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
            self.oof_proba_ = self._calibrate(raw)
            slices = group_slices(groups_arr)
            self.policy_ = fit_policy([self.oof_proba_[i] for i in slices], [y[i] for i in slices], ratio=self.ratio)
        self.estimator_ = self._fit_base(X, classes, weight)
        return self

    def _fit_base(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> BaseEstimator:
        base = make_base(self.classifier, self.random_state)
        if weight is None:
            return base.fit(X, y)
        if self.classifier == "logreg":  # a pipeline: the weight goes to its last step
            return base.fit(X, y, logisticregression__sample_weight=weight)
        return base.fit(X, y, sample_weight=weight)

    @property
    def threshold_(self) -> float:
        return self.policy_.threshold

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        a, b = self.calibration_
        return 1.0 / (1.0 + np.exp(-(a * raw + b)))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return _critical_score(self.estimator_, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self._calibrate(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)


def _critical_score(estimator: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """The log-odds of "critical": the binary model's decision function, or for a model of the
    teacher's categories logit(1 - P(not critical))."""
    if len(estimator.classes_) == 2:
        return estimator.decision_function(X)
    p = np.clip(estimator.predict_proba(X)[:, 0], 1e-12, 1 - 1e-12)
    return np.log1p(-p) - np.log(p)
