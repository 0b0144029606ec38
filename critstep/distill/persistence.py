"""Saving and loading a distilled model directory, without pickle.

    model.skops  the fitted scikit-learn estimator (skops; loaded with an explicit allow-list)
    model.json   feature settings, calibration, threshold, feature names, training stats, CV metrics
    README.md    the model card, for people

skops refuses types it does not trust; we trust only the few scikit-learn internals our own
classifiers need, so a model directory from elsewhere cannot run arbitrary code when loaded.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig
from critstep.errors import ModelError
from critstep.io import atomic_dir

FORMAT_VERSION = 1
MODEL_KIND = "distilled-model"
TRUSTED_TYPES = {"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}


@dataclass
class DistilledModel:
    """A trained step classifier with the feature settings it was trained on."""

    classifier: StepClassifier
    features: FeatureConfig
    feature_names: list[str]
    card: dict[str, Any] = field(default_factory=dict)


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
        meta = {
            "format_version": FORMAT_VERSION,
            "classifier": clf.get_params(),
            "calibration": list(clf.calibration_),
            "threshold": clf.threshold_,
            "n_features": int(clf.n_features_in_),
            "features": model.features.to_dict(),
            "feature_names": model.feature_names,
            "card": model.card,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(model), encoding="utf-8")
    return out


def load_model(model_dir: str | Path) -> DistilledModel:
    import numpy as np
    import skops.io as sio

    d = Path(model_dir)
    if not (d / "model.json").exists() or not (d / "model.skops").exists():
        raise ModelError(f"{d} is not a distilled model directory (needs model.json and model.skops; train one with `critstep distill`)")
    try:
        meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{d / 'model.json'}: malformed JSON ({e.msg}, line {e.lineno})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{d}: model format {meta.get('format_version')!r}, this critstep reads {FORMAT_VERSION}")
    untrusted = set(sio.get_untrusted_types(file=d / "model.skops"))
    if untrusted - TRUSTED_TYPES:
        raise ModelError(f"{d / 'model.skops'} contains types critstep does not trust: {sorted(untrusted - TRUSTED_TYPES)}")
    estimator = sio.load(d / "model.skops", trusted=sorted(untrusted))
    clf = StepClassifier(**meta["classifier"])
    clf.estimator_ = estimator
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = int(meta["n_features"])
    clf.calibration_ = tuple(meta["calibration"])
    clf.threshold_ = float(meta["threshold"])
    return DistilledModel(clf, FeatureConfig.from_dict(meta["features"]), list(meta["feature_names"]), meta.get("card", {}))


def model_card(model: DistilledModel) -> str:
    card = model.card
    f = model.features
    lines = [
        "# critstep distilled step selector",
        "",
        "Predicts which steps of an agent trajectory an LLM teacher would mark critical (ATLaS-style).",
        "Load it with `critstep select TRAJ --selector distilled --model DIR`.",
        "",
        "## Features",
        f"- groups: {', '.join(f.groups)}; {len(model.feature_names)} columns (neighbour context: {f.context})",
        *([f"- embedder: `{f.embedder}` ({f.dtype})"] if "semantic" in f.groups else []),
        *([f"- LM: `{f.lm}` ({f.dtype}; window {f.window_tokens} tokens, observations cut to {f.message_tokens}, steps to {f.step_tokens})"]
          if "token" in f.groups else []),
        "",
        "## Model",
        f"- classifier: {model.classifier.classifier}, Platt-calibrated on out-of-fold scores; threshold-mode cut {model.classifier.threshold_:.2f}",
    ]
    data = card.get("training_data", {})
    if data:
        lines += ["", "## Training data", *(f"- {k}: {v}" for k, v in data.items())]
    cv = card.get("cv", {})
    if cv:
        lines += ["", f"## Cross-validated agreement with the teacher ({cv.get('folds')}-fold, grouped by trajectory)", ""]
        lines += ["| mode | F1 | precision | recall | kappa |", "|---|---|---|---|---|"]
        for mode in ("ratio", "threshold"):
            m = cv.get(mode)
            if m:
                lines.append(f"| {mode} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['kappa']:.3f} |")
        scores = cv.get("ratio", {})
        if scores.get("auroc") is not None:
            lines += ["", f"AUROC {scores['auroc']:.3f}, average precision {scores['average_precision']:.3f}, Brier {scores['brier']:.4f}, ECE {scores['ece']:.4f}."]
    lines += ["", "## Versions", *(f"- {k} {v}" for k, v in card.get("versions", {}).items()), ""]
    return "\n".join(lines)
