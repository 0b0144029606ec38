"""Cascade agreement against oracle budget, on the shared seed labels with grouped cross-validation.

For each fold the distilled step classifier is trained on the other folds' trajectories and
scores the held-out fold; the cascade then sends 0, 5, 10, 25, 50 and 100% of the held-out
trajectories to a *recorded oracle* (the seed labels act as the oracle's answers). Routing by
the two uncertainties (expected disagreement, boundary margin) is compared with routing at
random. F1/kappa are micro over all steps of all folds (every trajectory predicted once per
seed), averaged over seeds. The oracle's dollars are GPT-4o list prices for the routed
trajectories' prompts (offline estimate, no calls made).

A recorded oracle that answers with the gold labels themselves is an upper bound: a teacher asked
again does not repeat itself. So the 44 trajectories of `seed_labels_second.jsonl` (an
independent second labeling) are also routed with the second labeling as the oracle's answers
(`requeried`), side by side with the gold answers on the same 44. Each of them keeps the
selection of the fold model that did not see it, and they are routed together (one budget over
the 44: ~9 per fold would leave 5% and 10% budgets without a single call).

    .venv/bin/python benchmarks/cascade_budget.py            # writes benchmarks/results/cascade_budget.{json,png}
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor, parse_groups
from critstep.distill.metrics import evaluate_selections
from critstep.distill.train import selections_from_proba
from critstep.formats import read_trajectories
from critstep.io import portable_path, write_result
from critstep.labels import read_labels
from critstep.selector.cascade import Budget, RecordedOracle, route
from critstep.selector.oracle import OracleConfig, OracleLabeler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
SHARES = (0.0, 0.05, 0.10, 0.25, 0.50, 1.0)
ROUTINGS = ("disagreement", "margin", "random")
ANSWERS = ("gold", "second")  # what the recorded oracle answers with on the doubly labeled trajectories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--second", type=Path, help="second labeling (default: DATA/seed_labels_second.jsonl where it exists)")
    ap.add_argument("--classifier", default="hgb")
    ap.add_argument("--groups", default=",".join(FeatureConfig().groups), help="feature groups (default: the distilled selector's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    claim_results("cascade_budget", args.out / "cascade_budget.json", args.out / "cascade_budget.png")

    from sklearn.model_selection import GroupKFold

    t0 = time.perf_counter()
    trajs = read_trajectories(args.data / "corpus.jsonl")
    labels = read_labels(args.data / "seed_labels.jsonl", trajs)
    data = build_dataset(FeatureExtractor(FeatureConfig(groups=parse_groups(args.groups))), trajs, labels)
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    second_path = args.second or args.data / "seed_labels_second.jsonl"
    second = read_labels(second_path, trajs) if args.second or second_path.exists() else {}
    paired = [by_id[i] for i in sorted(second) if i in by_id]
    print(f"{len(data.trajectories)} labeled trajectories, {len(data.y)} steps; features {data.X.shape[1]} in {time.perf_counter() - t0:.0f}s", flush=True)
    # Dollars of asking GPT-4o about each trajectory, from the oracle's offline estimate (no cache: list price).
    estimator = OracleLabeler(OracleConfig(model="gpt-4o", use_cache=False, ratio=args.ratio))
    usd = {t.id: float(estimator.estimate([t]).cost_usd) for t in data.trajectories}

    curves: dict[str, dict[float, list[dict]]] = {r: {s: [] for s in SHARES} for r in ROUTINGS}
    requeried: dict[str, dict[str, dict[float, list[dict]]]] = {a: {r: {s: [] for s in SHARES} for r in ROUTINGS} for a in ANSWERS}
    fit_seconds: list[float] = []
    for seed in range(args.seeds):
        pred: dict[str, dict[float, dict]] = {r: {s: {} for s in SHARES} for r in ROUTINGS}
        out_of_fold: dict = {}  # every trajectory's distilled selection, by the fold model that did not see it
        spent: dict[str, dict[float, float]] = {r: dict.fromkeys(SHARES, 0.0) for r in ROUTINGS}
        folds = GroupKFold(args.folds, shuffle=True, random_state=seed).split(data.X, data.y, data.groups)
        for k, (train, test) in enumerate(folds):
            start = time.perf_counter()
            clf = StepClassifier(classifier=args.classifier, ratio=args.ratio, random_state=seed).fit(
                data.X[train], data.y[train], groups=data.groups[train], categories=data.categories[train])
            fit_seconds.append(time.perf_counter() - start)
            index = [data.index[i] for i in test]
            # the distilled selection the cascade starts from: the fold model's default mode, as `critstep select`
            distilled = selections_from_proba(index, clf.predict_proba(data.X[test])[:, 1], args.ratio, clf.policy_, clf.policy_.mode)
            out_of_fold |= distilled
            fold_trajs = [by_id[tid] for tid in dict.fromkeys(tid for tid, _ in index)]
            oracle = RecordedOracle({t.id: labels[t.id] for t in fold_trajs}, usd)
            for share in SHARES:
                for routing in ROUTINGS:
                    chosen, cost = cascade(fold_trajs, distilled, oracle, Budget(share=share), routing, usd, seed * 1000 + k)
                    pred[routing][share].update(chosen)
                    spent[routing][share] += cost
            print(f"seed {seed} fold {k}: trained on {len(set(data.groups[train]))} trajectories in {fit_seconds[-1]:.1f}s", flush=True)
        for routing in ROUTINGS:
            for share in SHARES:
                m = evaluate_selections(pred[routing][share], gold, by_id)
                curves[routing][share].append({"f1": m["f1"], "kappa": m["kappa"], "precision": m["precision"], "recall": m["recall"],
                                               "usd_per_1k": spent[routing][share] / len(gold) * 1000})
        for answers in ANSWERS if paired else ():
            oracle = RecordedOracle({t.id: (gold if answers == "gold" else second)[t.id] for t in paired}, usd)
            for share in SHARES:
                for routing in ROUTINGS:
                    chosen, cost = cascade(paired, out_of_fold, oracle, Budget(share=share), routing, usd, seed)
                    m = evaluate_selections(chosen, {t.id: gold[t.id] for t in paired}, by_id)
                    requeried[answers][routing][share].append({"f1": m["f1"], "usd_per_1k": cost / len(paired) * 1000})

    def mean_curves(per_routing: dict[str, dict[float, list[dict]]]) -> dict[str, list[dict]]:
        return {routing: [{"share": share, **{key: float(np.mean([r[key] for r in runs])) for key in runs[0]},
                           "f1_std": float(np.std([r["f1"] for r in runs]))} for share, runs in per.items()]
                for routing, per in per_routing.items()}

    result = {
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
        "curves": mean_curves(curves),
    }
    if paired:
        result["requeried"] = {"second": portable_path(second_path), "trajectories": len(paired),
                               "answers": {a: mean_curves(requeried[a]) for a in ANSWERS}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / "cascade_budget.json", "cascade_budget", result)
    plot(result, args.out / "cascade_budget.png")
    print(f"{'share':>6} " + " ".join(f"{r + ' F1':>16}" for r in ROUTINGS) + f" {'$/1k (disagr.)':>15}")
    for i, share in enumerate(SHARES):
        row = [result["curves"][r][i] for r in ROUTINGS]
        print(f"{share:>6.0%} " + " ".join(f"{c['f1']:>16.3f}" for c in row) + f" {row[0]['usd_per_1k']:>15.2f}")
    if paired:
        print(f"\nthe {len(paired)} doubly labeled trajectories, the oracle answering with the gold or the second labeling:")
        for answers in ANSWERS:
            for routing in ROUTINGS:
                pts = result["requeried"]["answers"][answers][routing]
                print(f"{answers:>6} {routing:<12} " + " ".join(f"{p['share']:>4.0%} {p['f1']:.3f}" for p in pts))
    print(f"wrote {args.out / 'cascade_budget.json'} and .png in {time.perf_counter() - t0:.0f}s")


def cascade(trajs, distilled, oracle: RecordedOracle, budget: Budget, routing: str, usd: dict, seed: int) -> tuple[dict, float]:
    """The selections after routing `budget`'s calls by `routing`, and the dollars they cost."""
    if routing == "random":
        chosen = random_routing(trajs, distilled, budget, oracle, seed)
        return chosen, sum(usd[t] for t in chosen if chosen[t] is not distilled[t])
    chosen, run = route(trajs, distilled, oracle, budget, routing)
    return chosen, run.cost_usd


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
