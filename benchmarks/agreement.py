"""Agreement with the teacher on the seed labels: grouped 5-fold CV by trajectory.

Rows: random, perplexity (top-k by the small LM's step NLL), and the distilled classifier on
growing feature sets (embeddings only, + token features, + structural), in ratio mode (top-k at
the 30% cap) and threshold mode (the model picks how many, up to the cap). Each fold's model is
calibrated and its threshold tuned on inner folds of its own training part: no trajectory is
ever scored by a model that saw its labels. heldout.jsonl is not touched here.

    .venv/bin/python benchmarks/agreement.py [--shared ../shared/benchmark] [--folds 5]

Prints a table and writes benchmarks/results/agreement.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from critstep.distill.dataset import StepDataset, labeled_trajectories, targets
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.train import cross_validate
from critstep.formats import read_trajectories
from critstep.labels import read_labels
from critstep.selector.baselines import PerplexitySelector, RandomSelector

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("f1", "precision", "recall", "kappa", "auroc", "average_precision", "brier", "ece", "share_selected")


def summary(metrics: dict) -> dict:
    out = {k: metrics.get(k) for k in KEYS}
    out["per_env_f1"] = {e: round(m["f1"], 4) for e, m in metrics["per_env"].items()}
    out["per_category_recall"] = {c: round(v["recall"], 4) for c, v in metrics["per_category_recall"].items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/agreement[-token-subset].json")
    parser.add_argument("--token-cached-only", action="store_true",
                        help="use only the labeled trajectories whose token features are already cached (a paired subset, when the "
                             "token pass over the whole seed set is more than the machine can do in the time)")
    parser.add_argument("--no-token", action="store_true", help="skip the rows that need the LM (perplexity, token features)")
    args = parser.parse_args()
    suffix = "-token-subset" if args.token_cached_only else "-no-token" if args.no_token else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"agreement{suffix}.json"

    corpus = read_trajectories(args.shared / "corpus.jsonl")
    labels = read_labels(args.shared / "seed_labels.jsonl", corpus)
    trajectories = labeled_trajectories(corpus, labels)
    if args.token_cached_only:
        probe = FeatureExtractor(FeatureConfig(groups=("token",)))
        trajectories = [t for t in trajectories if probe.is_cached("token", t)]
        labels = {t.id: labels[t.id] for t in trajectories}
    by_id = {t.id: t for t in trajectories}
    envs = ", ".join(f"{e} {n}" for e, n in sorted(Counter(t.env for t in trajectories).items()))
    print(f"{len(trajectories)} labeled trajectories ({envs}), {sum(t.n_steps for t in trajectories)} steps, "
          f"{sum(len(lab.critical) for lab in labels.values())} critical; {args.folds}-fold CV grouped by trajectory")

    results: dict[str, dict] = {}
    t0 = time.time()
    results["random (seed 0)/ratio"] = summary(evaluate_selections(RandomSelector(0).select(trajectories), labels, by_id))
    if not args.no_token:
        results["perplexity/ratio"] = summary(evaluate_selections(PerplexitySelector().select(trajectories), labels, by_id))
    print(f"baselines done in {time.time() - t0:.0f}s", flush=True)

    blocks: dict[str, np.ndarray] = {}
    index = None
    for group in ("semantic", "structural") if args.no_token else ("semantic", "token", "structural"):
        t0 = time.time()
        X, index = FeatureExtractor(FeatureConfig(groups=(group,))).transform(trajectories)
        blocks[group] = X
        print(f"features {group}: {X.shape[1]} columns in {time.time() - t0:.0f}s", flush=True)
    assert index is not None
    y = targets(index, labels)
    groups = np.array([tid for tid, _ in index])

    variants = [
        ("structural only", ("structural",), "hgb"),
        ("embeddings only", ("semantic",), "hgb"),
        ("+ token features", ("semantic", "token"), "hgb"),
        ("+ structural (all)", ("semantic", "token", "structural"), "hgb"),
        ("embeddings + structural", ("semantic", "structural"), "hgb"),
        ("all, logistic regression", ("semantic", "token", "structural"), "logreg"),
        ("embeddings + structural, logistic regression", ("semantic", "structural"), "logreg"),
    ]
    variants = [v for v in variants if all(g in blocks for g in v[1])]
    for name, use, classifier in variants:
        t0 = time.time()
        data = StepDataset(np.hstack([blocks[g] for g in use]), y, groups, index, trajectories)
        cv = cross_validate(data, labels, folds=args.folds, classifier=classifier)
        for mode in ("ratio", "threshold"):
            results[f"{name} [{classifier}]/{mode}"] = summary(cv[mode])
        print(f"{name} [{classifier}]: ratio F1 {cv['ratio']['f1']:.3f}, threshold F1 {cv['threshold']['f1']:.3f} ({time.time() - t0:.0f}s)", flush=True)

    print()
    print(f"{'selector':<50}{'mode':<11}{'F1':>7}{'P':>7}{'R':>7}{'kappa':>7}{'AUROC':>7}{'AP':>7}{'ECE':>7}")
    for key, m in results.items():
        name, mode = key.rsplit("/", 1)
        fmt = lambda v: f"{v:7.3f}" if isinstance(v, float) else f"{'-':>7}"  # noqa: E731
        print(f"{name:<50}{mode:<11}{fmt(m['f1'])}{fmt(m['precision'])}{fmt(m['recall'])}{fmt(m['kappa'])}{fmt(m['auroc'])}{fmt(m['average_precision'])}{fmt(m['ece'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"folds": args.folds, "subset": "token-cached" if args.token_cached_only else "all seed labels", "no_token": args.no_token, "trajectories": len(trajectories), "steps": int(len(y)), "critical": int(y.sum()), "results": results,
               "note": "seed labels only, grouped CV by trajectory; heldout labels are withheld and unused"}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
