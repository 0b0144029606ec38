"""Distilled selector candidates against the teacher, side by side, on the 306 seed trajectories.

The protocol was fixed before any candidate ran:

- dev: one 3-fold split of the seed trajectories (stratified by env, seed 1000). Features and
  settings were chosen on it, and the candidate to ship was chosen on it; no choice was made on
  the report figures.
- report: 5-fold cross-validation grouped by trajectory and stratified by env, repeated with
  3 shuffles (seeds 0, 1, 2); mean ± std (and range) over the repeats. Every fold model learns
  its calibration, threshold, count scale and default mode from inner folds of its own training
  part, so no trajectory is scored by a model that saw its labels. For the shipped recipe ("gbm")
  this is the very cross_validate call `critstep distill --repeats 3` makes (same folds, seeds and
  features): its report figures are the shipped model's card
  (critstep/data/models/distilled-selector-seed306/README.md and model.json "cv").
- teacher: the second, independent labeling of 44 seed trajectories against the first (micro F1,
  per env, a 95% bootstrap interval over trajectories); each candidate is scored on the same 44
  from its first-repeat out-of-fold predictions, so the comparison is paired.

Modes: "default" (each fold model's own choice: threshold or learned count), "threshold",
"count" (round(scale x sum of probabilities) steps) and "ratio" (fill the 30% cap). Macro F1 is
the mean over envs with at least 10 trajectories (alfworld, qa-search, sciworld, tau-airline).
A diagnostic row, "teacher-k", gives every trajectory of the first repeat exactly the teacher's
own number of steps (the candidate's highest out-of-fold probabilities), a count no selection
policy knows: where "default" comes as close as it, choosing how many steps costs nothing and
what is left (1 - its F1) is the ranking's, which steps.

Candidates (see `CANDIDATES`): the previous release's recipe (HGB on semantic + structural
features), the shipped recipe ("gbm": + progress features, without the env-specific hashed
action names; the teacher's four categories learned as classes), the same learning critical
against the rest ("gbm-binary", shipped until the categories won on dev; the other HGB variants
below are binary too, as they were measured), the same with the hashed names, structural + progress only, a LambdaRank model within trajectories, stacked sequential
learning (a second HGB on the neighbours' out-of-fold probabilities), a 2-layer transformer and
a dilated-convolution network over the step vectors of a trajectory (torch, CPU), the mean of
the HGB, LambdaRank and stacked models' standardized scores ("ensemble"), and the HGB
with the small LM's hidden states (group "hidden"; on the trajectories whose hidden states are
cached: `--hidden-cached-only`, a paired subset, because that pass over the whole seed set costs
hours on the shared CPU). The fine-tuned MiniLM cross-encoder ("encoder", and stacked into or
blended with gbm: "gbm+encoder", "gbm+encoder-blend") is trained and scored on the dev folds by
benchmarks/encoder_candidate.py, through this file's helpers and `cross_validate`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/agreement.py --protocol dev --candidates gbm,gbm-v1,ranker
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/agreement.py --protocol report --candidates gbm,gbm-v1
    .venv/bin/python benchmarks/agreement.py --table          # print the saved results

Results are merged into benchmarks/results/agreement.json (one entry per protocol and candidate).
The ranker needs `lightgbm` (`pip install -e ".[bench]"`); heldout.jsonl is never read.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.dataset import StepDataset, dataset_of, labeled_trajectories
from critstep.distill.estimator import StepClassifier, group_slices, make_base
from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.metrics import evaluate_selections
from critstep.distill.policy import fit_policy
from critstep.distill.train import cross_validate
from critstep.formats import read_trajectories
from critstep.io import read_result, write_result
from critstep.labels import read_labels
from critstep.selection import Selection, select_top

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "agreement.json"
PROTOCOLS = {"dev": {"folds": 3, "repeats": 1, "seed": 1000}, "report": {"folds": 5, "repeats": 3, "seed": 0}}
MODES = ("default", "threshold", "count", "ratio")
TRAIN_MODES = ("threshold", "count")


# -- candidates that are not the shipped StepClassifier: same contract (fit with groups, a
#    policy_ from inner out-of-fold predictions, predict_proba of one trajectory's rows) ---------
class OutOfFoldCalibrated:
    """Inner 3-fold out-of-fold raw scores -> Platt calibration and selection policy, then a fit on all."""

    inner = 3

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, categories: np.ndarray | None = None) -> OutOfFoldCalibrated:
        """`categories` is not used: these candidates learn critical against the rest."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold

        raw = np.zeros(len(y))
        for train, test in GroupKFold(self.inner).split(X, y, groups):
            raw[test] = self._score(self._fit(X[train], y[train], groups[train]), X[test], groups[test])
        self.platt_ = LogisticRegression(C=1e4).fit(raw.reshape(-1, 1), y)
        slices = group_slices(groups)
        p = self.platt_.predict_proba(raw.reshape(-1, 1))[:, 1]
        self.policy_ = fit_policy([p[i] for i in slices], [y[i] for i in slices], modes=TRAIN_MODES)
        self.model_ = self._fit(X, y, groups)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # the rows of one trajectory
        p = self.platt_.predict_proba(self._score(self.model_, X, np.zeros(len(X))).reshape(-1, 1))[:, 1]
        return np.column_stack([1 - p, p])

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        raise NotImplementedError

    def _score(self, model: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _runs(groups: np.ndarray) -> list[slice]:
    """Contiguous runs of equal group ids (the rows of one trajectory)."""
    edges = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class Ranker(OutOfFoldCalibrated):
    """LightGBM LambdaRank grouped by trajectory; the count comes from the calibrated scores."""

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        import lightgbm as lgb

        model = lgb.LGBMRanker(objective="lambdarank", n_estimators=300, learning_rate=0.05, num_leaves=15, min_child_samples=20,
                               colsample_bytree=0.3, reg_lambda=1.0, random_state=0, n_jobs=1, verbose=-1)
        return model.fit(X, y, group=[r.stop - r.start for r in _runs(groups)])

    def _score(self, model: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return model.predict(X)


def proba_context(p: np.ndarray) -> np.ndarray:
    """Stage-2 features of one trajectory from its stage-1 probabilities: the step's and its two
    neighbours' on each side, its rank, its share of the maximum, the trajectory's sum and mean."""
    n = len(p)
    pad = np.concatenate([[0, 0], p, [0, 0]])
    rank = np.argsort(np.argsort(-p, kind="stable"), kind="stable")
    cols = [p, pad[1 : n + 1], pad[3 : n + 3], pad[0:n], pad[4 : n + 4], rank / max(1, n - 1), rank.astype(float),
            p / max(float(p.max()), 1e-6), np.full(n, p.sum()), np.full(n, p.mean()), p - p.mean(), np.full(n, np.log1p(n))]
    return np.column_stack(cols)


class Stacked(OutOfFoldCalibrated):
    """Stacked sequential learning: HGB, then a second HGB on the features plus proba_context of
    the first one's inner out-of-fold probabilities."""

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        from sklearn.model_selection import GroupKFold

        p1 = np.zeros(len(y))
        for train, test in GroupKFold(3).split(X, y, groups):
            p1[test] = make_base("hgb").fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        stage1 = make_base("hgb").fit(X, y)
        X2 = np.vstack([np.hstack([X[r], proba_context(p1[r])]) for r in _runs(groups)])
        return stage1, make_base("hgb", 1).fit(X2, y)

    def _score(self, model: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        stage1, stage2 = model
        p1 = stage1.predict_proba(X)[:, 1]
        return np.concatenate([stage2.decision_function(np.hstack([X[r], proba_context(p1[r])])) for r in _runs(groups)])


class Ensemble(OutOfFoldCalibrated):
    """The HGB, LambdaRank and stacked models together: the mean of their raw scores, each
    standardized on the training rows (their scales differ), calibrated as one score."""

    members = (Ranker, Stacked)

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        fitted = [(None, make_base("hgb").fit(X, y))] + [(member(), None) for member in self.members]
        fitted = [(m, f if m is None else m._fit(X, y, groups)) for m, f in fitted]
        raw = [self._member(m, f, X, groups) for m, f in fitted]
        return fitted, [(float(r.mean()), float(r.std()) or 1.0) for r in raw]

    @staticmethod
    def _member(member: OutOfFoldCalibrated | None, fitted: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return fitted.decision_function(X) if member is None else member._score(fitted, X, groups)

    def _score(self, model: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        fitted, scales = model
        return np.mean([(self._member(m, f, X, groups) - mu) / sd for (m, f), (mu, sd) in zip(fitted, scales, strict=True)], axis=0)


class Sequence(OutOfFoldCalibrated):
    """A small network over the standardized step vectors of one trajectory: a 2-layer transformer
    encoder ("transformer") or 4 dilated residual convolutions ("conv"), per-step logits, BCE
    averaged per trajectory; 40 epochs of AdamW, batches of similar-length trajectories."""

    def __init__(self, kind: str, hidden: int = 64, epochs: int = 40):
        self.kind, self.hidden, self.epochs = kind, hidden, epochs

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        import torch

        torch.manual_seed(0)
        # columns constant in the training part (rare hashed actions) keep their scale: dividing by a
        # tiny deviation would turn a test value into a huge activation
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd < 1e-3, 1.0, sd)
        seqs = [(torch.tensor((X[r] - mu) / sd, dtype=torch.float32), torch.tensor(y[r], dtype=torch.float32)) for r in _runs(groups)]
        net = _SeqNet(X.shape[1], self.hidden, self.kind)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        order = np.argsort([len(s[0]) for s in seqs], kind="stable")
        batches = [order[i : i + 16] for i in range(0, len(order), 16)]
        rng = np.random.default_rng(0)
        for _ in range(self.epochs):
            net.train()
            for b in rng.permutation(len(batches)):
                x, t, m = _pad([seqs[i] for i in batches[b]])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x, m), t, reduction="none")
                loss = ((loss * m).sum(1) / m.sum(1)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        return net, mu, sd

    def _score(self, model: Any, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        import torch

        net, mu, sd = model
        out = []
        with torch.inference_mode():
            for r in _runs(groups):
                x, _, m = _pad([(torch.tensor((X[r] - mu) / sd, dtype=torch.float32), torch.zeros(r.stop - r.start))])
                out.append(net(x, m)[0].numpy())
        return np.concatenate(out)


def _pad(items: list) -> tuple:
    import torch

    n = max(len(x) for x, _ in items)
    x = torch.zeros(len(items), n, items[0][0].shape[1])
    t = torch.zeros(len(items), n)
    m = torch.zeros(len(items), n)
    for i, (xi, ti) in enumerate(items):
        x[i, : len(xi)], t[i, : len(xi)], m[i, : len(xi)] = xi, ti, 1
    return x, t, m


def _SeqNet(d: int, h: int, kind: str) -> Any:  # noqa: N802 (a factory: torch is imported only when used)
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Dropout(0.2))
            if kind == "transformer":
                self.seq = nn.TransformerEncoder(nn.TransformerEncoderLayer(h, 4, 2 * h, dropout=0.2, batch_first=True), 2)
            else:
                self.seq = nn.ModuleList([nn.Conv1d(h, h, 3, padding=k, dilation=k) for k in (1, 2, 4, 8)])
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * h, 1))

        def forward(self, x: Any, mask: Any) -> Any:
            z = self.inp(x)
            if kind == "transformer":
                c = self.seq(z, src_key_padding_mask=mask == 0)
            else:
                c = z.transpose(1, 2)
                for conv in self.seq:
                    c = c + torch.nn.functional.gelu(conv(c * mask.unsqueeze(1)))
                c = c.transpose(1, 2)
            return self.head(torch.cat([c, z], -1)).squeeze(-1)

    return Net()


def _hgb(targets: str = "categories") -> Callable[[], Callable[[], Any]]:
    return lambda: (lambda: StepClassifier(ratio=0.3, random_state=0, targets=targets))


# name -> (feature groups, keep the hashed action names, factory of the per-fold model factory)
CANDIDATES: dict[str, tuple[tuple[str, ...], bool, Callable[[], Callable[[], Any]]]] = {
    "gbm": (("semantic", "structural", "progress"), False, _hgb()),  # the shipped recipe (FeatureConfig's defaults)
    "gbm-binary": (("semantic", "structural", "progress"), False, _hgb("binary")),  # the same, critical against the rest
    "gbm-v1": (("semantic", "structural"), True, _hgb("binary")),  # the previous release's
    "gbm-hash": (("semantic", "structural", "progress"), True, _hgb("binary")),
    "gbm-structural-progress": (("structural", "progress"), True, _hgb("binary")),
    "ranker": (("semantic", "structural", "progress"), True, lambda: Ranker),
    "stacked": (("semantic", "structural", "progress"), True, lambda: Stacked),
    "transformer": (("semantic", "structural", "progress"), True, lambda: (lambda: Sequence("transformer"))),
    "conv": (("semantic", "structural", "progress"), True, lambda: (lambda: Sequence("conv"))),
    "gbm+hidden": (("semantic", "hidden", "structural", "progress"), False, _hgb("binary")),
    "ensemble": (("semantic", "structural", "progress"), True, lambda: Ensemble),
}
# The sequence models read each step's own vector: the neighbour/rank context columns are left out.
NO_CONTEXT = ("transformer", "conv")


def dataset(name: str, trajectories: list, labels: dict) -> StepDataset:
    groups, hashes, _ = CANDIDATES[name]
    extractor = FeatureExtractor(FeatureConfig(groups=groups, context=name not in NO_CONTEXT, action_hashes=hashes), progress=True)
    X, index = extractor.transform(trajectories)
    return dataset_of(X, index, labels, trajectories)


def teacher_consistency(first: dict, second: dict, by_id: dict, seed: int = 0) -> dict[str, Any]:
    """F1 of the second labeling against the first on the trajectories both labeled."""

    def f1(ids: list[str]) -> float:
        tp = sum(len(set(first[i].steps) & set(second[i].steps)) for i in ids)
        n = sum(len(first[i].steps) + len(second[i].steps) for i in ids)
        return 2 * tp / n if n else 0.0

    ids = sorted(second)
    rng = np.random.default_rng(seed)
    boot = [f1(list(rng.choice(ids, len(ids)))) for _ in range(2000)]
    envs = sorted({by_id[i].env for i in ids})
    return {"trajectories": len(ids), "f1": f1(ids), "f1_95ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "per_env": {e: {"trajectories": sum(by_id[i].env == e for i in ids), "f1": f1([i for i in ids if by_id[i].env == e])} for e in envs}}


def paired_f1(selections: dict, labels: dict, ids: list[str]) -> float:
    tp = sum(len(set(selections[i].steps) & set(labels[i].steps)) for i in ids)
    n = sum(len(selections[i].steps) + len(labels[i].steps) for i in ids)
    return 2 * tp / n if n else 0.0


def teacher_k(cv: dict[str, Any], data: StepDataset, labels: dict) -> dict[str, Selection]:
    """The first repeat's selections with the teacher's own step count for each trajectory."""
    return {t.id: Selection(t.id, select_top(cv["proba"][data.groups == t.id], len(labels[t.id].steps)))
            for t in data.trajectories}


def summarize(cv: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"default_mode_chosen": cv["default_mode_chosen"]}
    for mode in MODES:
        m = cv[mode]
        out[mode] = {"spread": m["spread"], "first_repeat": {k: m.get(k) for k in ("f1", "precision", "recall", "kappa", "auroc",
                                                                                    "average_precision", "ece", "share_selected", "macro_f1")},
                     "per_category_recall": {c: v["recall"] for c, v in m["per_category_recall"].items()}}
    return out


def table(results: dict) -> str:
    lines = []
    for protocol in ("dev", "report"):
        rows = results.get(protocol, {})
        if not rows:
            continue
        lines.append(f"\n== {protocol} ({PROTOCOLS[protocol]['folds']}-fold x {PROTOCOLS[protocol]['repeats']}) ==")
        lines.append(f"{'candidate':<26}{'mode':<11}{'micro F1':>16}{'macro F1':>16}  per env (mean)                       paired-44  trajs")
        for name, r in rows.items():
            for mode in MODES:
                s = r[mode]["spread"]
                macro = s.get("macro_f1", {})
                per = " ".join(f"{e[:5]} {v['mean']:.3f}" for e, v in s["per_env_f1"].items() if e in ("alfworld", "qa-search", "sciworld", "tau-airline"))
                paired = r.get("paired_44", {}).get(mode)
                lines.append(f"{name:<26}{mode:<11}{s['f1']['mean']:>9.3f} ± {s['f1']['std']:.3f}{macro.get('mean', float('nan')):>9.3f} ± "
                             f"{macro.get('std', float('nan')):.3f}  {per}  {'' if paired is None else f'{paired:.3f}':>8}  {r['trajectories']}")
            if "teacher_k" in r:  # a diagnostic of the first repeat: no spread
                k = r["teacher_k"]
                per = " ".join(f"{e[:5]} {k['per_env_f1'][e]:.3f}" for e in ("alfworld", "qa-search", "sciworld", "tau-airline") if e in k["per_env_f1"])
                paired = k["paired_44"]
                lines.append(f"{name:<26}{'teacher-k':<11}{k['f1']:>9.3f} (1st) {k['macro_f1']:>9.3f} (1st)  {per}  "
                             f"{'' if paired is None else f'{paired:.3f}':>8}  {r['trajectories']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="report")
    parser.add_argument("--candidates", default="gbm,gbm-v1")
    parser.add_argument("--hidden-cached-only", action="store_true",
                        help="score on the trajectories whose LM hidden states are cached (a paired subset; compare with the same "
                             "candidates run with this flag, which is recorded as '<name>@hidden-subset')")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the saved results and exit")
    args = parser.parse_args()
    claim_results("agreement", args.out)
    results = read_result(args.out, "agreement")
    if args.table:
        print(table(results))
        return
    try:
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))  # the machine is shared; OMP_NUM_THREADS bounds the rest
    except ImportError:
        pass

    corpus = read_trajectories(args.shared / "corpus.jsonl")
    labels = read_labels(args.shared / "seed_labels.jsonl", corpus)
    second = read_labels(args.shared / "seed_labels_second.jsonl", corpus)
    trajectories = labeled_trajectories(corpus, labels)
    suffix = ""
    if args.hidden_cached_only:
        probe = FeatureExtractor(FeatureConfig(groups=("hidden",)))
        trajectories = [t for t in trajectories if probe.is_cached("hidden", t)]
        suffix = "@hidden-subset"
    by_id = {t.id: t for t in trajectories}
    results["teacher"] = teacher_consistency({i: labels[i] for i in second}, second, {t.id: t for t in corpus})
    t = results["teacher"]
    print(f"teacher self-consistency on {t['trajectories']} trajectories: F1 {t['f1']:.3f} (95% CI {t['f1_95ci'][0]:.3f}-{t['f1_95ci'][1]:.3f}); "
          + ", ".join(f"{e} {v['f1']:.3f} ({v['trajectories']})" for e, v in t["per_env"].items()))
    paired_ids = [i for i in second if i in by_id]
    protocol = PROTOCOLS[args.protocol]
    for name in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r} (known: {', '.join(CANDIDATES)})")
        start = time.perf_counter()
        data = dataset(name, trajectories, labels)
        feature_seconds = time.perf_counter() - start
        make = CANDIDATES[name][2]()
        start = time.perf_counter()
        cv = cross_validate(data, labels, protocol["folds"], repeats=protocol["repeats"], seed=protocol["seed"], progress=True, make=make)
        entry = summarize(cv) | {"trajectories": len(trajectories), "columns": int(data.X.shape[1]),
                                 "feature_seconds": feature_seconds, "cv_seconds": time.perf_counter() - start}
        entry["paired_44"] = {mode: paired_f1(cv["selections"][mode], labels, paired_ids) for mode in MODES} if paired_ids else {}
        given_count = teacher_k(cv, data, labels)
        m = evaluate_selections(given_count, {t.id: labels[t.id] for t in trajectories}, by_id)
        entry["teacher_k"] = {"f1": m["f1"], "macro_f1": m["macro_f1"], "per_env_f1": {e: v["f1"] for e, v in m["per_env"].items()},
                              "paired_44": paired_f1(given_count, labels, paired_ids) if paired_ids else None}
        results.setdefault(args.protocol, {})[name + suffix] = entry
        print(table({args.protocol: {name + suffix: entry}}), flush=True)
        write_result(args.out, "agreement", results)  # after every candidate: a long run keeps what it finished
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
