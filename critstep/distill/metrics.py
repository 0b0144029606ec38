"""Agreement of a selection with teacher labels: step-level micro metrics, per env and category.

Every step of every labeled trajectory is one binary decision (critical or not), so F1,
precision, recall and Cohen's kappa are micro-averaged over steps. With step scores present,
threshold-free metrics too: AUROC and average precision rank steps; Brier and expected
calibration error (ECE, 10 equal-width bins) judge scores as probabilities and are only given
when every score lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from critstep.errors import InputError
from critstep.labels import TrajectoryLabels
from critstep.selection import CATEGORIES, Selection
from critstep.trajectory import Trajectory

MACRO_MIN_TRAJECTORIES = 10


def _counts(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    n = len(gold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    # Cohen's kappa for two binary raters: (observed - chance agreement) / (1 - chance agreement).
    observed = (pred == gold).mean() if n else 0.0
    chance = (pred.mean() * gold.mean() + (1 - pred.mean()) * (1 - gold.mean())) if n else 0.0
    kappa = (observed - chance) / (1 - chance) if chance < 1 else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "kappa": float(kappa), "n_steps": n,
            "n_gold": int(gold.sum()), "n_selected": int(pred.sum()), "share_selected": float(pred.mean()) if n else 0.0}


def expected_calibration_error(scores: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(scores[mask].mean() - gold[mask].mean())
    return float(ece)


def score_metrics(scores: np.ndarray, gold: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = 0 < gold.sum() < len(gold)
    out: dict[str, float | None] = {
        "auroc": float(roc_auc_score(gold, scores)) if both else None,
        "average_precision": float(average_precision_score(gold, scores)) if both else None,
        "brier": None,
        "ece": None,
    }
    if len(scores) and scores.min() >= 0.0 and scores.max() <= 1.0:
        out["brier"] = float(((scores - gold) ** 2).mean())
        out["ece"] = expected_calibration_error(scores, gold)
    return out


def evaluate_selections(
    pred: Mapping[str, Selection],
    gold: Mapping[str, TrajectoryLabels],
    trajectories: Mapping[str, Trajectory] | None = None,
) -> dict:
    """Metrics of `pred` against `gold` over the gold trajectories (each must be predicted).

    `trajectories` (by id) supply each trajectory's env for the per-env breakdown.
    """
    missing = [i for i in gold if i not in pred]
    if missing:
        raise InputError(f"{len(missing)} labeled trajectories have no prediction (first: {missing[0]!r})")
    all_pred: list[np.ndarray] = []
    all_gold: list[np.ndarray] = []
    all_scores: list[np.ndarray] = []
    envs: list[str] = []
    categories: list[str] = []
    have_scores = True
    for tid, labels in gold.items():
        n = labels.n_steps
        sel = pred[tid]
        bad = [s for s in sel.steps if not 0 <= s < n]
        if bad:
            raise InputError(f"prediction for {tid!r} selects steps {bad}, outside 0..{n - 1}")
        p = np.zeros(n, dtype=bool)
        p[sel.steps] = True
        g = np.zeros(n, dtype=bool)
        g[labels.steps] = True
        cat = np.array([""] * n, dtype=object)
        for c in labels.critical:
            cat[c.step] = c.category
        all_pred.append(p)
        all_gold.append(g)
        categories += list(cat)
        env = trajectories[tid].env if trajectories is not None and tid in trajectories else "unknown"
        envs += [env] * n
        if sel.scores is None or len(sel.scores) != n:
            have_scores = False
        else:
            all_scores.append(np.asarray(sel.scores, dtype=float))
    p = np.concatenate(all_pred) if all_pred else np.zeros(0, dtype=bool)
    g = np.concatenate(all_gold) if all_gold else np.zeros(0, dtype=bool)
    out: dict = _counts(p, g)
    out["n_trajectories"] = len(gold)
    env_arr = np.array(envs, dtype=object)
    out["per_env"] = {e: _counts(p[env_arr == e], g[env_arr == e]) for e in sorted(set(envs))}
    per_trajectory_env = [trajectories[tid].env if trajectories is not None and tid in trajectories else "unknown" for tid in gold]
    for e, m in out["per_env"].items():
        m["n_trajectories"] = per_trajectory_env.count(e)
    # Macro over envs: each env counts once, whatever its length; envs with a handful of
    # trajectories are left out (their F1 swings with a single step).
    out["macro_envs"] = [e for e, m in out["per_env"].items() if m["n_trajectories"] >= MACRO_MIN_TRAJECTORIES]
    out["macro_f1"] = float(np.mean([out["per_env"][e]["f1"] for e in out["macro_envs"]])) if out["macro_envs"] else None
    cat_arr = np.array(categories, dtype=object)
    out["per_category_recall"] = {
        c: {"recall": float(p[cat_arr == c].mean()), "n_gold": int((cat_arr == c).sum())} for c in CATEGORIES if (cat_arr == c).any()
    }
    if have_scores and all_scores:
        out |= score_metrics(np.concatenate(all_scores), g.astype(float))
    return out


def format_report(metrics: dict) -> str:
    """A short human-readable table of `evaluate_selections`' result."""
    lines = [
        f"steps {metrics['n_steps']:,} in {metrics['n_trajectories']} trajectories; selected {metrics['share_selected']:.1%}, gold {metrics['n_gold'] / max(1, metrics['n_steps']):.1%}",
        f"F1 {metrics['f1']:.3f}  precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}  kappa {metrics['kappa']:.3f}",
    ]
    if metrics.get("macro_f1") is not None:
        lines.append(f"macro F1 over envs {metrics['macro_f1']:.3f} ({', '.join(metrics['macro_envs'])}: envs with >= {MACRO_MIN_TRAJECTORIES} trajectories)")
    if metrics.get("auroc") is not None:
        extra = f"AUROC {metrics['auroc']:.3f}  AP {metrics['average_precision']:.3f}"
        if metrics.get("brier") is not None:
            extra += f"  Brier {metrics['brier']:.4f}  ECE {metrics['ece']:.4f}"
        lines.append(extra)
    lines.append("per env:")
    for env, m in metrics["per_env"].items():
        lines.append(f"  {env:<14} F1 {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  ({m['n_steps']} steps)")
    lines.append("per category recall:")
    lines += [f"  {c:<22} {v['recall']:.3f}  ({v['n_gold']} gold)" for c, v in metrics["per_category_recall"].items()]
    return "\n".join(lines)
