"""Saving and loading a distilled model directory, without pickle.

    model.skops      the fitted scikit-learn estimator (skops; loaded with an explicit allow-list)
    training.npz     the feature rows it was fitted on (labels, trajectory ids, envs, weights), so
                     `critstep distill --base` can refit it with a new env's labels (see adapt.py);
                     plain arrays, read with allow_pickle=False
    model.json       feature settings, calibration, selection policy, feature names, training
                     stats, CV metrics
    README.md        the model card, for people

skops refuses types it does not trust; we trust only the few scikit-learn internals our own
classifiers need, so a model directory from elsewhere cannot run arbitrary code when loaded.
Everything about a directory is checked when it is loaded, before any feature is computed:
a pickle, an archive holding something else than our classifier, or a feature count that does
not match fails with one line.

Format 3 adds the selection policy (mode, threshold, count scale, per-env cuts) and the training
rows; a format-1 directory (critstep 0.1) still loads, with threshold mode as its default, and
`--base` refuses it in one line (it carries no training rows). Format 2 (development builds only)
loads unless it holds per-env adapters, which were replaced by the refit. Format 4's classifier
may be a model of the teacher's categories (more than two classes, which an older critstep would
misread, hence the new number) and its training rows carry the categories; format-3 rows, which
have none, read with every critical step as a critical action, and an older model keeps learning
critical against the rest (`targets="binary"`) when refitted.
"""

from __future__ import annotations

import json
import platform
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from critstep.distill.estimator import StepClassifier, category_codes
from critstep.distill.features import FeatureConfig
from critstep.distill.policy import SelectionPolicy
from critstep.errors import ModelError
from critstep.io import atomic_dir
from critstep.selection import CATEGORIES

if TYPE_CHECKING:
    from critstep.distill.dataset import StepDataset

FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)
TRAINING_FILE = "training.npz"
MODEL_KIND = "distilled-model"
TRUSTED_TYPES = {"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}
SHIPPED_MODEL = "distilled-selector-seed306"


@dataclass
class TrainingRows:
    """The feature rows a classifier was fitted on: per row its label, trajectory id, env, weight
    and the teacher's category (`category_codes`)."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    envs: np.ndarray
    weight: np.ndarray
    categories: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.X.ndim != 2 or any(len(a) != n for a in (self.X, self.groups, self.envs, self.weight, self.categories)):
            raise ValueError(f"training rows disagree in length: X {self.X.shape}, y {len(self.y)}, groups {len(self.groups)}, "
                             f"envs {len(self.envs)}, weight {len(self.weight)}, categories {len(self.categories)}")

    @classmethod
    def of(cls, data: StepDataset, weight: float) -> TrainingRows:
        """The rows of a labeled dataset, each with `weight`."""
        env_of = {t.id: t.env for t in data.trajectories}
        return cls(data.X, data.y, data.groups, np.array([env_of[g] for g in data.groups]), np.full(len(data.y), weight), data.categories)

    def without(self, ids: set[str]) -> TrainingRows:
        """The rows of the other trajectories."""
        keep = ~np.isin(self.groups, list(ids))
        return TrainingRows(*(a[keep] for a in self.arrays()))

    def plus(self, other: TrainingRows) -> TrainingRows:
        return TrainingRows(*(np.concatenate([a, b]) for a, b in zip(self.arrays(), other.arrays(), strict=True)))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.X, self.y, self.groups, self.envs, self.weight, self.categories


@dataclass
class DistilledModel:
    """A trained step classifier with the feature settings it was trained on, and (format 3) the
    rows it was trained on, which `critstep distill --base` refits with a new env's labels."""

    classifier: StepClassifier
    features: FeatureConfig
    feature_names: list[str]
    card: dict[str, Any] = field(default_factory=dict)
    training: TrainingRows | None = None
    # where a loaded model's training rows are: read on first use, since only `--base` needs them
    training_file: Path | None = None
    # format 4 saves the teacher's categories with the rows: missing there, they are damage
    categories_saved: bool = True

    def training_rows(self) -> TrainingRows | None:
        """The rows the classifier was fitted on (None for a model saved before format 3)."""
        if self.training is None and self.training_file is not None:
            self.training = read_training_rows(self.training_file, int(self.classifier.n_features_in_), self.categories_saved)
        return self.training

    @property
    def policy(self) -> SelectionPolicy:
        return self.classifier.policy_

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(critical) per row."""
        return self.classifier.predict_proba(X)[:, 1] if len(X) else np.zeros(0)


def default_model_dir() -> Path:
    """The distilled model shipped inside the package (trained on the 306 labeled seed
    trajectories): what `select`, `compare`, `demo` and the cascade use when no --model is given."""
    return Path(__file__).resolve().parents[1] / "data" / "models" / SHIPPED_MODEL


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The model card of a model directory (model.json's "card"), without loading the model."""
    path = Path(model_dir) / "model.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("card", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def in_sample_warning(model_dir: str | Path, ids: Sequence[str], shipped: bool = False) -> str | None:
    """A warning when `ids` include the training trajectories of the model at `model_dir`."""
    seen = set(read_card(model_dir).get("training_ids", [])) & set(ids)
    if not seen:
        return None
    if shipped:
        return (f"{len(seen)} of the {len(ids)} scored trajectories are training data of the shipped distilled model (the default "
                "of `critstep select`): if the predictions came from it, their F1 is in-sample (--model DIR checks another model)")
    return f"the distilled model was trained on {len(seen)} of the {len(ids)} scored trajectories: its F1 there is in-sample"


def versions() -> dict[str, str]:
    import sklearn
    import skops

    from critstep import __version__

    out = {"critstep": __version__, "python": platform.python_version(), "scikit-learn": sklearn.__version__, "skops": skops.__version__}
    try:
        import torch
        import transformers

        out |= {"torch": torch.__version__, "transformers": transformers.__version__}
    except ImportError:
        pass
    return out


def save_model(model: DistilledModel, out_dir: str | Path) -> Path:
    """Write the directory atomically: a failed save leaves any earlier model there intact."""
    import skops.io as sio

    out = Path(out_dir)
    with atomic_dir(out, MODEL_KIND) as tmp:
        clf = model.classifier
        sio.dump(clf.estimator_, tmp / "model.skops")
        t = model.training_rows()
        if t is not None:
            np.savez_compressed(tmp / TRAINING_FILE, X=t.X.astype(np.float32), y=t.y.astype(np.uint8), groups=t.groups.astype(str),
                                envs=t.envs.astype(str), weight=t.weight.astype(np.float32), categories=t.categories.astype(np.uint8))
        meta = {
            "format_version": FORMAT_VERSION,
            "classifier": clf.get_params(),
            "calibration": list(clf.calibration_),
            "policy": clf.policy_.to_dict(),
            "training_rows": None if t is None else TRAINING_FILE,
            "n_features": int(clf.n_features_in_),
            "features": model.features.to_dict(),
            "feature_names": model.feature_names,
            "card": model.card,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(model), encoding="utf-8")
    return out


def _expected_estimator(classifier: str) -> type:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    return {"hgb": HistGradientBoostingClassifier, "logreg": Pipeline}.get(classifier, HistGradientBoostingClassifier)


def _load_skops(path: Path, expected: type) -> Any:
    """The estimator in a skops archive, checked: no pickle, only trusted types, the expected class."""
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path} is not a skops archive ({e}); critstep never loads pickles") from None
    if untrusted - TRUSTED_TYPES:
        raise ModelError(f"{path} contains types critstep does not trust: {sorted(untrusted - TRUSTED_TYPES)}")
    try:
        estimator = sio.load(path, trusted=sorted(untrusted))
    except Exception as e:  # a damaged archive: one line, whatever broke inside skops
        raise ModelError(f"{path}: cannot read the archive ({type(e).__name__}: {e})") from None
    if not isinstance(estimator, expected):
        raise ModelError(f"{path} holds a {type(estimator).__name__}, not the {expected.__name__} its model.json describes")
    return estimator


def load_model(model_dir: str | Path) -> DistilledModel:
    """Load and check a model directory; any problem is a one-line `ModelError`."""
    d = Path(model_dir)
    if not (d / "model.json").exists() or not (d / "model.skops").exists():
        raise ModelError(f"{d} is not a distilled model directory (needs model.json and model.skops; train one with `critstep distill`)")
    try:
        meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{d / 'model.json'}: malformed JSON ({e.msg}, line {e.lineno})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in READABLE_FORMATS:
        raise ModelError(f"{d}: model format {version!r}, this critstep reads formats {', '.join(map(str, READABLE_FORMATS))}; "
                         "retrain it with `critstep distill`")
    skops_path = d / "model.skops"
    try:
        params = dict(meta["classifier"])
        if version < 4:  # saved before "targets": its classifier learned critical against the rest, and a refit keeps that
            params.setdefault("targets", "binary")
        clf = StepClassifier(**params)
        features = FeatureConfig.from_dict(meta["features"])
        feature_names = [str(n) for n in meta["feature_names"]]
        n_features = int(meta["n_features"])
        calibration = tuple(float(v) for v in meta["calibration"])
        if version == 1:
            policy = SelectionPolicy(mode="threshold", threshold=float(meta["threshold"]))
        else:
            policy = SelectionPolicy.from_dict(meta["policy"])
        if meta.get("adapters"):
            raise ModelError(f"{d}: per-env adapters (a development build's format 2) are no longer read; adapt the base model again "
                             "with `critstep distill --base`")
        training_file = meta.get("training_rows")
    except ModelError:
        raise
    except Exception as e:  # a damaged or foreign model.json: one line, whatever broke
        raise ModelError(f"{d}: cannot read the model ({type(e).__name__}: {e})") from None
    estimator = _load_skops(skops_path, _expected_estimator(clf.classifier))
    if getattr(estimator, "n_features_in_", n_features) != n_features or len(feature_names) != n_features:
        raise ModelError(f"{d}: the classifier expects {getattr(estimator, 'n_features_in_', '?')} features, model.json names "
                         f"{len(feature_names)} and says {n_features}")
    clf.estimator_ = estimator
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = n_features
    clf.calibration_ = calibration
    clf.policy_ = policy
    training = None if training_file is None else d / Path(str(training_file)).name
    return DistilledModel(clf, features, feature_names, meta.get("card", {}), training_file=training, categories_saved=version >= 4)


def read_training_rows(path: Path, n_features: int, categories_saved: bool = True) -> TrainingRows:
    """A model directory's training rows, checked: plain arrays only (no pickle), a finite float
    matrix of the model's width, 0/1 integer labels, 1-D string ids and envs, positive weights,
    category codes that agree with the labels (absent in format 3: critical steps read as critical
    actions)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"a single {type(loaded).__name__}, not an archive of named arrays")
        with loaded as f:
            X, y, groups, envs, weight = (f[k] for k in ("X", "y", "groups", "envs", "weight"))
            categories = f["categories"] if "categories" in f.files else None
    except OSError as e:
        raise ModelError(f"{path}: cannot read the training rows ({e.strerror or e})") from None
    except (ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error) as e:
        pickled = "allow_pickle" in str(e)
        raise ModelError(f"{path}: not plain training rows ({type(e).__name__}: {e})" + ("; critstep never loads pickles" if pickled else "")) from None
    problems = []
    if X.ndim != 2 or X.shape[1] != n_features or X.dtype.kind != "f" or not np.isfinite(X).all():
        problems.append(f"X must be a finite float matrix of {n_features} columns (got {X.dtype} {X.shape})")
    if y.ndim != 1 or y.dtype.kind not in "biu" or not set(np.unique(y).tolist()) <= {0, 1}:
        problems.append(f"y must be 0/1 integers (got {y.dtype} {y.shape})")
    for name, a in (("groups", groups), ("envs", envs)):
        if a.ndim != 1 or a.dtype.kind != "U":
            problems.append(f"{name} must be 1-D strings (got {a.dtype} {a.shape})")
    if weight.ndim != 1 or weight.dtype.kind != "f" or not np.isfinite(weight).all() or (weight <= 0).any():
        problems.append(f"weight must be positive finite floats (got {weight.dtype} {weight.shape})")
    if not problems and categories is None and categories_saved:
        problems.append("no categories (a format-4 model saves them with its rows)")
    if not problems and categories is None:
        categories = np.where(y == 1, category_codes(["critical_action"])[0], 0)
    if not problems and (categories.ndim != 1 or categories.dtype.kind not in "iu" or categories.shape != y.shape
                         or ((categories > 0) != (y == 1)).any() or categories.min(initial=0) < 0
                         or categories.max(initial=0) > len(CATEGORIES)):
        problems.append(f"categories must be codes 0-{len(CATEGORIES)} that are 0 exactly where y is 0 (got {categories.dtype} {categories.shape})")
    if not problems and len(y) == 0:
        problems.append("no rows")
    if not problems and len({len(X), len(y), len(groups), len(envs), len(weight)}) > 1:
        problems.append(f"lengths disagree: X {len(X)}, y {len(y)}, groups {len(groups)}, envs {len(envs)}, weight {len(weight)}")
    if problems:
        raise ModelError(f"{path}: damaged training rows: {'; '.join(problems)}")
    return TrainingRows(X.astype(np.float64), y.astype(int), groups, envs, weight.astype(np.float64), categories.astype(int))


def _pm(stats: dict[str, float] | None) -> str:
    return "–" if not stats else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _classes(clf: StepClassifier) -> str:
    classes = getattr(clf.estimator_, "classes_", [0, 1])
    if len(classes) == 2:
        return " (critical or not)"
    names = ["not critical", *CATEGORIES]
    return f" over the teacher's categories ({', '.join(names[int(c)] for c in classes)}; P(critical) = 1 - P(not critical))"


def model_card(model: DistilledModel) -> str:
    """The README.md of a model directory: what it reads, how it selects, how well, from what."""
    card = model.card
    f = model.features
    policy = model.policy
    lines = [
        "# critstep distilled step selector",
        "",
        "Predicts which steps of an agent trajectory an LLM teacher would mark critical (ATLaS-style).",
        "Use it with `critstep select TRAJ --selector distilled --model DIR` (the shipped model needs no `--model`).",
        "",
        "## Features",
        f"- groups: {', '.join(f.groups)}; {len(model.feature_names)} columns (neighbour context: {f.context})",
        *([f"- embedder: `{f.embedder}` ({f.dtype})"] if "semantic" in f.groups else []),
        *([f"- LM: `{f.lm}` ({f.dtype}; window {f.window_tokens} tokens, observations cut to {f.message_tokens}, steps to {f.step_tokens})"]
          if {"token", "hidden"} & set(f.groups) else []),
        "",
        "## Model and selection",
        f"- classifier: {model.classifier.classifier}{_classes(model.classifier)}, Platt-calibrated on out-of-fold scores (grouped by trajectory)",
        f"- default selection mode: **{policy.mode}** (threshold {policy.threshold:.2f}; count = round({policy.count_scale:.2f} x sum of "
        "probabilities); the --ratio cap always applies, at least one step is kept)",
    ]
    if policy.fit_f1:
        lines.append("- chosen on out-of-fold predictions of the training data: " + ", ".join(f"{m} F1 {v:.3f}" for m, v in policy.fit_f1.items()))
    if policy.env_thresholds:
        lines.append("- own cuts of adapted envs: " + ", ".join(f"{e} {c:.2f}" for e, c in sorted(policy.env_thresholds.items())))
    for k, adaptation in enumerate(card.get("adaptations", []), 1):
        lines += ["", f"## Adaptation {k} (`critstep distill --base`: refitted with new labels; the training data and "
                  "cross-validated figures below are the original model's)", *(f"- {key}: {value}" for key, value in adaptation.items())]
    data = card.get("training_data", {})
    if data:
        lines += ["", "## Training data", *(f"- {k}: {v}" for k, v in data.items())]
    cv = card.get("cv", {})
    if cv:
        lines += ["", f"## Cross-validated agreement with the teacher ({cv.get('folds')}-fold grouped by trajectory, "
                  f"{cv.get('repeats', 1)} repeat(s); mean ± std over repeats)", ""]
        envs = list(cv.get("threshold", {}).get("spread", {}).get("per_env_f1", {}))
        lines += ["| mode | micro F1 | macro F1 | " + " | ".join(envs) + " |", "|---" * (3 + len(envs)) + "|"]
        for mode in ("default", "threshold", "count", "ratio"):
            spread = cv.get(mode, {}).get("spread")
            if spread:
                per = spread.get("per_env_f1", {})
                lines.append(f"| {mode} | {_pm(spread['f1'])} | {_pm(spread.get('macro_f1'))} | " + " | ".join(_pm(per.get(e)) for e in envs) + " |")
        scores = cv.get("threshold", {})
        if scores.get("auroc") is not None:
            lines += ["", f"AUROC {scores['auroc']:.3f}, average precision {scores['average_precision']:.3f}, Brier {scores['brier']:.4f}, "
                      f"ECE {scores['ece']:.4f} (first repeat)."]
    lines += ["", "## Versions", *(f"- {k} {v}" for k, v in card.get("versions", {}).items()), ""]
    return "\n".join(lines)
