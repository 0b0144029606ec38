"""Active against random labeling order, on the shared seed labels, revealing labels step by step.

Grouped cross-validation by trajectory: each fold is held out as the test set once; the other
trajectories form the pool. Both orders start from the same random 10% of the pool and grow by
10% a round: *random* reveals pool labels in a random order, *active* reveals the ones
`critstep.distill.active.suggest` picks (uncertainty x diversity, using the model trained on
the labels revealed so far). After every round the distilled step classifier is retrained and
scored on the test fold. F1 is micro over all steps, pooled over
the folds (every trajectory tested once per seed), then averaged over seeds.

Target (issue 6): active reaches the random order's final agreement (all pool labels) with at
most 60% of the labels.

    .venv/bin/python benchmarks/active_labeling.py     # writes benchmarks/results/active_labeling.{json,png}
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.active import suggest, trajectory_embeddings
from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor, parse_groups
from critstep.distill.metrics import evaluate_selections
from critstep.distill.train import selections_from_proba
from critstep.formats import read_trajectories
from critstep.io import portable_path, write_result
from critstep.labels import read_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
ORDERS = ("active", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10,
                    help="the pool is revealed in this many equal shares; the first share is random and the same for both orders")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--classifier", default="hgb")
    ap.add_argument("--groups", default=",".join(FeatureConfig().groups), help="feature groups (default: the distilled selector's default)")
    ap.add_argument("--calibration-folds", type=int, default=0,
                    help="inner folds for Platt calibration of each round's model (0: the classifier's own probabilities; faster)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    claim_results("active_labeling", args.out / "active_labeling.json", args.out / "active_labeling.png")

    from sklearn.model_selection import GroupKFold

    t0 = time.perf_counter()
    trajs = read_trajectories(args.data / "corpus.jsonl")
    labels = read_labels(args.data / "seed_labels.jsonl", trajs)
    extractor = FeatureExtractor(FeatureConfig(groups=parse_groups(args.groups)))
    data = build_dataset(extractor, trajs, labels)
    by_id = {t.id: t for t in data.trajectories}
    gold = {t.id: labels[t.id] for t in data.trajectories}
    rows_of = {tid: np.flatnonzero(data.groups == tid) for tid in by_id}
    vectors = dict(zip(by_id, trajectory_embeddings(extractor, data.trajectories), strict=True))
    print(f"{len(by_id)} labeled trajectories, {len(data.y)} steps, {data.X.shape[1]} features in {time.perf_counter() - t0:.0f}s", flush=True)

    def fit(ids: list[str], seed: int) -> StepClassifier:
        idx = np.concatenate([rows_of[i] for i in ids])
        clf = StepClassifier(classifier=args.classifier, calibration_folds=args.calibration_folds, ratio=args.ratio, random_state=seed)
        return clf.fit(data.X[idx], data.y[idx], groups=data.groups[idx], categories=data.categories[idx])

    def proba(clf: StepClassifier, ids: list[str]) -> dict[str, np.ndarray]:
        idx = np.concatenate([rows_of[i] for i in ids])
        p = clf.predict_proba(data.X[idx])[:, 1]
        bounds = np.cumsum([0] + [len(rows_of[i]) for i in ids])
        return {i: p[a:b] for i, a, b in zip(ids, bounds[:-1], bounds[1:], strict=True)}

    per_seed: dict[str, list[list[float]]] = {o: [] for o in ORDERS}
    shares: list[float] = []
    fits = 0
    for seed in range(args.seeds):
        pred: dict[str, list[dict]] = {o: [{} for _ in range(args.rounds)] for o in ORDERS}
        counts: list[list[float]] = [[] for _ in range(args.rounds)]
        for k, (train, test) in enumerate(GroupKFold(args.folds, shuffle=True, random_state=seed).split(data.X, data.y, data.groups)):
            pool = list(dict.fromkeys(data.groups[train]))
            test_ids = list(dict.fromkeys(data.groups[test]))
            rng = random.Random(seed * 100 + k)
            shuffled = rng.sample(pool, len(pool))
            # Rounded down, so "60% of the labels" never means more than 60%.
            sizes = [max(3, len(pool) * (r + 1) // args.rounds) for r in range(args.rounds)]
            for order in ORDERS:
                labeled = shuffled[: sizes[0]]
                clf = None  # the model trained on the labels revealed so far
                for step, size in enumerate(sizes):
                    if order == "random":
                        labeled = shuffled[:size]
                    elif clf is not None and size > len(labeled):
                        todo = [by_id[i] for i in pool if i not in set(labeled)]
                        picks = suggest(todo, labeled, size - len(labeled), lambda ts, c=clf: proba(c, [t.id for t in ts]),
                                        lambda ts: np.stack([vectors[t.id] for t in ts]), args.ratio)
                        labeled = labeled + [s.id for s in picks]
                    clf = fit(labeled, seed)
                    fits += 1
                    p = proba(clf, test_ids)
                    sel = selections_from_proba([(i, s) for i in test_ids for s in range(len(p[i]))], np.concatenate([p[i] for i in test_ids]), args.ratio)
                    pred[order][step].update(sel)
                    if order == ORDERS[0]:
                        counts[step].append(len(labeled) / len(pool))
            print(f"seed {seed} fold {k}: pool {len(pool)}, test {len(test_ids)}; {fits} fits, {time.perf_counter() - t0:.0f}s", flush=True)
        for order in ORDERS:
            per_seed[order].append([evaluate_selections(p, gold, by_id)["f1"] for p in pred[order]])
        shares = [float(np.mean(c)) for c in counts]

    mean = {o: np.mean(per_seed[o], axis=0) for o in ORDERS}
    final = float(mean["random"][-1])
    reach = {o: next((shares[i] for i, f in enumerate(mean[o]) if f >= final), None) for o in ORDERS}
    result = {
        "data": portable_path(args.data),
        "trajectories": len(by_id),
        "folds": args.folds,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "classifier": args.classifier,
        "feature_groups": args.groups,
        "n_features": int(data.X.shape[1]),
        "calibration_folds": args.calibration_folds,
        "machine": "shared 2-core CPU machine, loaded by other jobs",
        "seconds": time.perf_counter() - t0,
        "share_of_pool_labeled": shares,
        "mean_pool_size": len(by_id) * (args.folds - 1) / args.folds,
        "f1": {o: mean[o].tolist() for o in ORDERS},
        "f1_std": {o: np.std(per_seed[o], axis=0).tolist() for o in ORDERS},
        "random_final_f1": final,
        "share_to_reach_random_final": reach,
        "target_met": reach["active"] is not None and reach["active"] <= 0.6,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / "active_labeling.json", "active_labeling", result)
    plot(result, args.out / "active_labeling.png")
    print(f"{'labeled':>8} {'active F1':>10} {'random F1':>10}")
    for i, share in enumerate(shares):
        print(f"{share:>8.0%} {mean['active'][i]:>10.3f} {mean['random'][i]:>10.3f}")
    print(f"random's final F1 {final:.3f}; reached by active at {reach['active']}, by random at {reach['random']} of the pool labels")
    print(f"target (active reaches it with <= 60% of labels): {'met' if result['target_met'] else 'NOT met'}")
    print(f"wrote {args.out / 'active_labeling.json'} and .png in {time.perf_counter() - t0:.0f}s")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s * result["mean_pool_size"] for s in result["share_of_pool_labeled"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for order, style in zip(ORDERS, ("o-", "s--"), strict=True):
        f1, sd = np.array(result["f1"][order]), np.array(result["f1_std"][order])
        ax.plot(x, f1, style, label=f"{order} order")
        ax.fill_between(x, f1 - sd, f1 + sd, alpha=0.15)
    ax.axhline(result["random_final_f1"], color="grey", linestyle=":", linewidth=1)
    ax.axvline(0.6 * result["mean_pool_size"], color="grey", linestyle="--", linewidth=1, label="60% of the labels")
    ax.set_xlabel("labeled trajectories (of the training pool)")
    ax.set_ylabel("F1 on the held-out fold")
    ax.set_title(f"Active vs random labeling ({result['folds']}-fold CV, {result['seeds']} seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
