"""New environments: leave-one-environment-out agreement, and the curve as labels of the env are added.

For each main env of the seed set (alfworld, qa-search, sciworld, tau-airline), the distilled
selector (the shipped recipe) is trained on the labeled trajectories of every *other* env and
scores the trajectories of the one left out (0 labels). Then k = 5, 10, 20 trajectories of that
env are labeled (random draws) and the model is adapted to them exactly as `critstep distill
--base` does (adapt.py: a refit on the base's rows plus the k trajectories, weighted, and the
env's own cut from the refit's out-of-fold probabilities); the rest of the env is scored, next to
the unadapted model on the same trajectories (paired). F1 is micro over the scored trajectories'
steps, in each model's default mode (the adapted env in threshold mode with its own cut);
mean ± std over the draws. With 0 labels it also records the F1 when each trajectory gets the
teacher's own number of steps (`f1_teacher_k`, a diagnostic): how much of the loss is the count.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_transfer.py [--draws 5] [--envs sciworld,tau-airline]

Writes benchmarks/results/distill_transfer.json; heldout.jsonl is never read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.adapt import ADAPT_WEIGHT, env_cuts, refit
from critstep.distill.dataset import build_dataset
from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.persistence import TrainingRows
from critstep.formats import read_trajectories
from critstep.io import read_result, write_result
from critstep.labels import read_labels
from critstep.selection import select_top

ROOT = Path(__file__).resolve().parents[1]
ENVS = ("alfworld", "qa-search", "sciworld", "tau-airline")
SHOTS = (5, 10, 20)


def f1(selected: list[list[int]], gold: list[np.ndarray]) -> float:
    tp = sum(int(g[s].sum()) for s, g in zip(selected, gold, strict=True))
    n = sum(len(s) for s in selected) + sum(int(g.sum()) for g in gold)
    return 2 * tp / n if n else 0.0


def one_env(env: str, data, rows: dict, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    """Left-out agreement of `env` with 0 labels and with k labels, adapted against the base."""
    envs = np.array([t.env for t in data.trajectories for _ in range(t.n_steps)])

    def training(ids: list[str], weight: float) -> TrainingRows:
        r = np.concatenate([rows[i] for i in ids])
        return TrainingRows(data.X[r], data.y[r], data.groups[r], envs[r], np.full(len(r), weight), data.categories[r])

    def scored(clf: StepClassifier, ids: list[str]) -> float:
        """Micro F1 on `ids` in the model's default mode (an env with its own cut: threshold mode at that cut)."""
        proba = [clf.predict_proba(data.X[rows[i]])[:, 1] for i in ids]
        return f1([clf.policy_.select(p, args.ratio, env=env) for p in proba], [data.y[rows[i]] for i in ids])

    others = [t.id for t in data.trajectories if t.env != env]
    own = [t.id for t in data.trajectories if t.env == env]
    base_rows = training(others, 1.0)
    base = StepClassifier(ratio=args.ratio).fit(base_rows.X, base_rows.y, groups=base_rows.groups, categories=base_rows.categories)
    # With the teacher's own number of steps per trajectory (a diagnostic: no policy knows it), what
    # is left of the gap is the ranking's, which steps, and not the count's.
    gold = [data.y[rows[i]] for i in own]
    given_count = f1([select_top(base.predict_proba(data.X[rows[i]])[:, 1], int(g.sum())) for i, g in zip(own, gold, strict=True)], gold)
    entry: dict = {"trajectories": len(own), "labels_0": {"f1": scored(base, own), "mode": base.policy_.mode, "f1_teacher_k": given_count}}
    print(f"{env:<12} 0 labels: F1 {entry['labels_0']['f1']:.3f} ({base.policy_.mode} mode; {given_count:.3f} with the teacher's count)", flush=True)
    for k in SHOTS:
        runs: dict[str, list[float]] = {"base": [], "adapted": []}
        for d in range(args.draws):
            shots = sorted(np.random.default_rng(1000 + d).choice(own, k, replace=False).tolist())
            test = [i for i in own if i not in shots]
            clf, merged = refit(base, base_rows, training(shots, ADAPT_WEIGHT), args.ratio)
            clf.policy_.env_thresholds = {env: env_cuts(clf, merged, env, args.ratio)[0]}
            runs["base"].append(scored(base, test))
            runs["adapted"].append(scored(clf, test))
        entry[f"labels_{k}"] = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for name, v in runs.items()}
        print(f"{env:<12} {k} labels: " + "  ".join(f"{n} {np.mean(v):.3f} ± {np.std(v):.3f}" for n, v in runs.items()), flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--draws", type=int, default=5, help="random draws of the k labeled trajectories")
    parser.add_argument("--groups", default=",".join(FeatureConfig().groups), help="feature groups (default: the shipped recipe's)")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--envs", default=",".join(ENVS), help="envs to leave out (the others' saved results are kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_transfer.json")
    args = parser.parse_args()
    claim_results("distill_transfer", args.out)

    corpus = read_trajectories(args.shared / "corpus.jsonl")
    labels = read_labels(args.shared / "seed_labels.jsonl", corpus)
    config = FeatureConfig(groups=tuple(g.strip() for g in args.groups.split(",")))
    data = build_dataset(FeatureExtractor(config, progress=True), corpus, labels)
    rows = {t.id: np.flatnonzero(data.groups == t.id) for t in data.trajectories}
    result: dict = {"features": list(config.groups), "draws": args.draws, "ratio": args.ratio, "adapt": f"refit, weight {ADAPT_WEIGHT:g}", "envs": {}}
    saved = read_result(args.out, "distill_transfer")
    if {k: saved.get(k) for k in ("features", "draws", "ratio", "adapt")} == {k: result[k] for k in ("features", "draws", "ratio", "adapt")}:
        result["envs"] = saved["envs"]  # same settings: keep the envs this run does not redo
    for env in [e.strip() for e in args.envs.split(",") if e.strip()]:
        start = time.perf_counter()
        result["envs"][env] = one_env(env, data, rows, args) | {"seconds": time.perf_counter() - start}
        write_result(args.out, "distill_transfer", result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
