"""Cascade agreement against oracle budget, on the shared seed labels with grouped cross-validation.

For each fold the distilled step classifier is trained on the other folds' trajectories and
scores the held-out fold; the cascade then sends 0, 5, 10, 25, 50 and 100% of the held-out
trajectories to a *recorded oracle* (the seed labels act as the oracle's answers). Routing by
the two uncertainties (expected disagreement, boundary margin) is compared with routing at
random. F1/kappa are micro over all steps of all folds (every trajectory predicted once per
seed), averaged over seeds. The oracle's dollars are GPT-4o list prices for the routed
trajectories' prompts (offline estimate, no calls made).

    .venv/bin/python benchmarks/cascade_budget.py            # writes benchmarks/results/cascade_budget.{json,png}
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor, parse_groups
from critstep.distill.metrics import evaluate_selections
from critstep.distill.train import selections_from_proba
from critstep.formats import read_trajectories
from critstep.io import portable_path, write_json
from critstep.labels import read_labels
from critstep.selector.cascade import Budget, RecordedOracle, route
from critstep.selector.oracle import OracleConfig, OracleLabeler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
SHARES = (0.0, 0.05, 0.10, 0.25, 0.50, 1.0)
ROUTINGS = ("disagreement", "margin", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--classifier", default="hgb")
    ap.add_argument("--groups", default=",".join(FeatureConfig().groups), help="feature groups (default: the distilled selector's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from sklearn.model_selection import GroupKFold

    t0 = time.perf_counter()
    trajs = read_trajectories(args.data / "corpus.jsonl")
    labels = read_labels(args.data / "seed_labels.jsonl", trajs)
    data = build_dataset(FeatureExtractor(FeatureConfig(groups=parse_groups(args.groups))), trajs, labels)
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    print(f"{len(data.trajectories)} labeled trajectories, {len(data.y)} steps; features {data.X.shape[1]} in {time.perf_counter() - t0:.0f}s", flush=True)
    # Dollars of asking GPT-4o about each trajectory, from the oracle's offline estimate (no cache: list price).
    estimator = OracleLabeler(OracleConfig(model="gpt-4o", use_cache=False, ratio=args.ratio))
    usd = {t.id: float(estimator.estimate([t]).cost_usd) for t in data.trajectories}

    curves: dict[str, dict[float, list[dict]]] = {r: {s: [] for s in SHARES} for r in ROUTINGS}
    fit_seconds: list[float] = []
    for seed in range(args.seeds):
        pred: dict[str, dict[float, dict]] = {r: {s: {} for s in SHARES} for r in ROUTINGS}
        spent: dict[str, dict[float, float]] = {r: dict.fromkeys(SHARES, 0.0) for r in ROUTINGS}
        folds = GroupKFold(args.folds, shuffle=True, random_state=seed).split(data.X, data.y, data.groups)
        for k, (train, test) in enumerate(folds):
            start = time.perf_counter()
            # critical against the rest, as the saved figures were measured (the shipped model now learns the categories)
            clf = StepClassifier(classifier=args.classifier, ratio=args.ratio, random_state=seed, targets="binary").fit(
                data.X[train], data.y[train], groups=data.groups[train])
            fit_seconds.append(time.perf_counter() - start)
            index = [data.index[i] for i in test]
            # the distilled selection the cascade starts from: the fold model's default mode, as `critstep select`
            distilled = selections_from_proba(index, clf.predict_proba(data.X[test])[:, 1], args.ratio, clf.policy_, clf.policy_.mode)
            fold_trajs = [by_id[tid] for tid in dict.fromkeys(tid for tid, _ in index)]
            oracle = RecordedOracle({t.id: labels[t.id] for t in fold_trajs}, usd)
            for share in SHARES:
                budget = Budget(share=share)
                for routing in ROUTINGS:
                    if routing == "random":
                        chosen = random_routing(fold_trajs, distilled, budget, oracle, seed * 1000 + k)
                        cost = sum(usd[t] for t in chosen if chosen[t] is not distilled[t])
                    else:
                        chosen, run = route(fold_trajs, distilled, oracle, budget, routing)
                        cost = run.cost_usd
                    pred[routing][share].update(chosen)
                    spent[routing][share] += cost
            print(f"seed {seed} fold {k}: trained on {len(set(data.groups[train]))} trajectories in {fit_seconds[-1]:.1f}s", flush=True)
        for routing in ROUTINGS:
            for share in SHARES:
                m = evaluate_selections(pred[routing][share], gold, by_id)
                curves[routing][share].append({"f1": m["f1"], "kappa": m["kappa"], "precision": m["precision"], "recall": m["recall"],
                                               "usd_per_1k": spent[routing][share] / len(gold) * 1000})

    result = {
        "benchmark": "cascade_budget",
        "data": portable_path(args.data),
        "trajectories": len(gold),
        "steps": int(len(data.y)),
        "folds": args.folds,
        "seeds": args.seeds,
        "ratio": args.ratio,
        "classifier": args.classifier,
        "feature_groups": args.groups,
        "n_features": int(data.X.shape[1]),
        "oracle": "recorded (seed labels as the oracle's answers); dollars = GPT-4o list price of the routed prompts, offline estimate",
        "mean_fit_seconds": float(np.mean(fit_seconds)),
        "machine": "shared 2-core CPU machine, loaded by other jobs",
        "curves": {
            routing: [
                {"share": share, **{key: float(np.mean([r[key] for r in runs])) for key in runs[0]},
                 "f1_std": float(np.std([r["f1"] for r in runs]))}
                for share, runs in per.items()
            ]
            for routing, per in curves.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "cascade_budget.json", result)
    plot(result, args.out / "cascade_budget.png")
    print(f"{'share':>6} " + " ".join(f"{r + ' F1':>16}" for r in ROUTINGS) + f" {'$/1k (disagr.)':>15}")
    for i, share in enumerate(SHARES):
        row = [result["curves"][r][i] for r in ROUTINGS]
        print(f"{share:>6.0%} " + " ".join(f"{c['f1']:>16.3f}" for c in row) + f" {row[0]['usd_per_1k']:>15.2f}")
    print(f"wrote {args.out / 'cascade_budget.json'} and .png in {time.perf_counter() - t0:.0f}s")


def random_routing(trajs, distilled, budget: Budget, oracle: RecordedOracle, seed: int) -> dict:
    """The same number of oracle calls as the cascade, spent on trajectories drawn at random."""
    n = budget.max_calls(len(trajs)) or 0
    picked = random.Random(seed).sample([t for t in trajs if t.n_steps > 0], min(n, len(trajs)))
    answers = oracle.label(picked).labels
    out = dict(distilled)
    for tid, lab in answers.items():
        out[tid] = lab.to_selection()
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for routing, style in zip(ROUTINGS, ("o-", "s--", "x:"), strict=True):
        pts = result["curves"][routing]
        ax.plot([p["share"] * 100 for p in pts], [p["f1"] for p in pts], style, label=f"route by {routing}" if routing != "random" else "route at random")
    ax.set_xlabel("% of trajectories sent to the oracle")
    ax.set_ylabel("F1 against the teacher (seed labels)")
    ax.set_title(f"Cascade agreement vs budget ({result['folds']}-fold CV, {result['seeds']} seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
