"""A fine-tuned small cross-encoder as a step scorer, on agreement.py's dev protocol (the issue's candidate).

Each step is one input to all-MiniLM-L6-v2 (the local `minilm`), fine-tuned on CPU (1 thread):

    [CLS] step k of n [SEP] task (head) [SEP] before: observation before (head)
          [SEP] step: the step (tail) [SEP] after: observation after (head) [SEP]

truncated per field (task 48 tokens, head and tail; observation before 40, step 80 from its end, observation
after 64: at most ~240 tokens), mean-pooled, concatenated with position inputs (k / (n - 1),
log(1 + n) / 5, first step, last step) and scored by a linear head; plain BCE, AdamW (layers
lr 1e-4, head 1e-3, 5% warm-up then linear decay), 3 epochs, batches of 16 of similar length. The
embeddings and the bottom 3 of the 6 layers stay frozen, so their outputs are computed once for
all steps; the top 3 layers and the head train (a full fine-tune costs twice as much per epoch,
which the shared 1-core budget did not allow).

Folds are agreement.py's dev folds (`cv_splits` with the dev seed, the same trajectory order), and
every figure is scored by agreement.py's `cross_validate` through a model that looks up
precomputed encoder logits, so the metrics, selection code and paired-44 figure are the shipped
ones. Per dev fold f the script trains two encoders:

- "outer" on the two other folds: it scores fold f (the test figures);
- "single" on fold f alone: it scores the two other folds. For the outer fold k with training
  folds {j, l}, single(j) scores l and single(l) scores j: out-of-fold encoder logits for every
  training row, from models that never saw the test fold. They fit the encoder's Platt scaling
  and selection policy ("encoder") and the stacked models' training column.

Candidates written (dev protocol, into benchmarks/results/agreement.json, merged):

- "encoder": the encoder alone (Platt + policy from the inner out-of-fold logits);
- "gbm+encoder": the shipped gbm's features plus three encoder columns (logit, logit minus its
  trajectory's mean, rank within the trajectory); training rows carry out-of-fold logits;
- "gbm+encoder-blend": (1 - w) x gbm probability + w x the encoder's Platt probability, w on a
  0.05 grid chosen on the training part's out-of-fold predictions (gbm's from inner 3-fold).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/encoder_candidate.py     # ~55 min on 1 loaded core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoder_candidate.py --score-only   # re-score from the saved logits

The logits of a training run are kept under --work (outside the repository); heldout.jsonl is never read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import claim_results
from agreement import (  # benchmarks/ is on sys.path
    MODES,
    PROTOCOLS,
    RESULTS,
    ROOT,
    TRAIN_MODES,
    dataset,
    paired_f1,
    summarize,
    table,
)

from critstep.distill.dataset import StepDataset, labeled_trajectories
from critstep.distill.estimator import StepClassifier, group_slices
from critstep.distill.policy import fit_policy
from critstep.distill.train import cross_validate, cv_splits
from critstep.formats import read_trajectories
from critstep.io import claim_output_dir, read_result, write_result
from critstep.labels import read_labels
from critstep.models import sentence_model_path
from critstep.trajectory import Trajectory

LIMITS = {"task": 48, "before": 40, "step": 80, "after": 64}  # tokens per field; the step keeps its end
CHARS = 8  # characters per token kept before tokenizing (a generous bound: long texts are cut first)
BATCH = 16
FROZEN = 3  # embeddings and the bottom 3 of 6 layers stay frozen (computed once); the top 3 and the head train
FOLDS = 3


# -- inputs -------------------------------------------------------------------------------------------------
def encode_inputs(tokenizer: Any, trajectories: list[Trajectory]) -> tuple[list[list[int]], np.ndarray, list[tuple[str, int]]]:
    """Token ids and position inputs of every step, in the feature matrix's row order (trajectory, step)."""
    fields: list[tuple[str, str, str, str, str]] = []
    index: list[tuple[str, int]] = []
    pos: list[list[float]] = []
    for t in trajectories:
        n = t.n_steps
        for s in t.steps():
            fields.append((f"step {s.index + 1} of {n}", t.task, (s.observation_before or "")[: CHARS * LIMITS["before"]],
                           s.text[-CHARS * LIMITS["step"]:], (s.observation_after or "")[: CHARS * LIMITS["after"]]))
            index.append((t.id, s.index))
            pos.append([s.index / max(1, n - 1), np.log1p(n) / 5, float(s.index == 0), float(s.index == n - 1)])
    distinct = list(dict.fromkeys(text for f in fields for text in f))
    tokens = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"], strict=True))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    before, step, after = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("before:", "step:", "after:"))
    ids = []
    for position, task, obs_before, text, obs_after in fields:
        ids.append([cls, *tokens[position], sep, *head_tail(tokens[task], LIMITS["task"]), sep, *before, *tokens[obs_before][: LIMITS["before"]], sep,
                    *step, *tokens[text][-LIMITS["step"]:], sep, *after, *tokens[obs_after][: LIMITS["after"]], sep])
    return ids, np.array(pos, dtype=np.float32), index


def head_tail(tokens: list[int], n: int) -> list[int]:
    """The first third and the last two thirds of `n` tokens (a task's instruction often ends it)."""
    return tokens if len(tokens) <= n else tokens[: n // 3] + tokens[len(tokens) - (n - n // 3):]


# -- the model -----------------------------------------------------------------------------------------------
def load_encoder(path: str) -> Any:
    from transformers import AutoModel

    return AutoModel.from_pretrained(path).eval()


def lower_states(encoder: Any, ids: list[list[int]]) -> list[Any]:
    """Per row the output of the frozen embeddings + bottom FROZEN layers (computed once: they do not train)."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    out: list[Any] = [None] * len(ids)
    with torch.inference_mode():
        for b in batches(ids, np.arange(len(ids)), None):
            x, m = pad_ids(ids, b)
            h = encoder.embeddings(input_ids=x)
            mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=h, attention_mask=m)
            for layer in encoder.encoder.layer[:FROZEN]:
                h = layer(h, mask)
            for i, r in enumerate(b):
                out[r] = h[i, : len(ids[r])].clone()
    return out


def make_net(encoder: Any) -> Any:
    """The trainable part: a copy of the top layers and a linear head over the mean-pooled states + position inputs."""
    import copy

    import torch
    from torch import nn
    from transformers.masking_utils import create_bidirectional_mask

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = encoder.config
            self.layers = copy.deepcopy(encoder.encoder.layer[FROZEN:])
            self.head = nn.Linear(encoder.config.hidden_size + 4, 1)

        def forward(self, h: Any, m: Any, pos: Any) -> Any:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=m)
            for layer in self.layers:
                h = layer(h, mask)
            w = m.unsqueeze(-1).to(h.dtype)
            return self.head(torch.cat([(h * w).sum(1) / w.sum(1), pos], -1)).squeeze(-1)

    return Net()


def batches(ids: list[Any], rows: np.ndarray, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Rows in batches of similar length (shuffled within equal lengths and in batch order when training)."""
    lengths = np.array([len(ids[r]) for r in rows])
    jitter = rng.random(len(rows)) if rng is not None else np.zeros(len(rows))
    order = rows[np.lexsort((jitter, lengths))]
    out = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    return [out[i] for i in rng.permutation(len(out))] if rng is not None else out


def pad_ids(ids: list[list[int]], rows: np.ndarray) -> tuple[Any, Any]:
    import torch

    width = max(len(ids[r]) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    m = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(ids[r])] = torch.tensor(ids[r])
        m[i, : len(ids[r])] = 1
    return x, m


def collate(states: list[Any], pos: np.ndarray, rows: np.ndarray) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(states[r]) for r in rows)
    h = torch.zeros(len(rows), width, states[rows[0]].shape[1])
    m = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        h[i, : len(states[r])] = states[r]
        m[i, : len(states[r])] = 1
    return h, m, torch.from_numpy(pos[rows])


def train(encoder: Any, states: list[Any], pos: np.ndarray, y: np.ndarray, rows: np.ndarray, epochs: int, seed: int = 0) -> tuple[Any, list[float]]:
    """Fine-tune a fresh encoder on `rows`; returns it and the seconds of each epoch."""
    import torch

    torch.manual_seed(seed)
    net = make_net(encoder)
    rng = np.random.default_rng(seed)
    per_epoch = len(batches(states, rows, None))
    total = epochs * per_epoch
    opt = torch.optim.AdamW([{"params": net.layers.parameters(), "lr": 1e-4}, {"params": net.head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup))))
    seconds = []
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        for b in batches(states, rows, rng):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(*collate(states, pos, b)), torch.from_numpy(y[b].astype(np.float32)))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - start)
    net.eval()
    return net, seconds


def score(net: Any, states: list[Any], pos: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits of `rows` (in `rows` order) and the seconds it took."""
    import torch

    out = np.zeros(len(states), dtype=np.float32)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches(states, rows, None):
            out[b] = net(*collate(states, pos, b)).numpy()
    return out[rows], time.perf_counter() - start


# -- training: per dev fold an "outer" encoder (the other folds) and a "single" one (this fold) ------------------
def train_all(args: argparse.Namespace, trajectories: list[Trajectory], y: np.ndarray, fold_of: np.ndarray, work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    path = str(sentence_model_path("minilm"))
    ids, pos, _ = encode_inputs(AutoTokenizer.from_pretrained(path), trajectories)
    encoder = load_encoder(path)
    start = time.perf_counter()
    states = lower_states(encoder, ids)
    meta: dict[str, Any] = {"epochs": args.epochs, "frozen_layers": FROZEN, "batch": BATCH, "limits": LIMITS, "rows": len(ids),
                            "mean_tokens": float(np.mean([len(i) for i in ids])), "lower_seconds": time.perf_counter() - start, "models": []}
    outer = np.full(len(ids), np.nan, dtype=np.float32)
    single = np.full((len(ids), FOLDS), np.nan, dtype=np.float32)
    for k in range(FOLDS):
        for name, fit_rows, score_rows in (("outer", fold_of != k, fold_of == k), ("single", fold_of == k, fold_of != k)):
            fit_rows, score_rows = np.flatnonzero(fit_rows), np.flatnonzero(score_rows)
            net, seconds = train(encoder, states, pos, y, fit_rows, args.epochs, seed=k)
            logits, score_seconds = score(net, states, pos, score_rows)
            if name == "outer":
                outer[score_rows] = logits
            else:
                single[score_rows, k] = logits
            meta["models"].append({"model": f"{name}{k}", "train_rows": len(fit_rows), "epoch_seconds": seconds,
                                   "scored_rows": len(score_rows), "score_seconds": score_seconds})
            print(f"{name}{k}: {len(fit_rows)} rows, epochs {', '.join(f'{s:.0f}' for s in seconds)} s; "
                  f"scored {len(score_rows)} rows in {score_seconds:.0f} s", flush=True)
            np.savez(work / "logits.npz", outer=outer, single=single, fold_of=fold_of)
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# -- scoring through agreement.py's cross_validate ------------------------------------------------------------
def encoder_columns(logits: np.ndarray) -> np.ndarray:
    """One trajectory's encoder columns: the logit, minus the trajectory's mean, and its rank (0 = highest)."""
    rank = np.argsort(np.argsort(-logits, kind="stable"), kind="stable")
    return np.column_stack([logits, logits - logits.mean(), rank / max(1, len(logits) - 1)])


class Precomputed:
    """cross_validate's model contract over the saved encoder logits; X's last column is the row number.

    fit works out its outer fold from the training rows (the one fold they lack) and reads each
    training row's logit from the single-fold encoder of the other training fold (out-of-fold);
    predict_proba reads the outer encoder's logits of the test fold."""

    def __init__(self, kind: str, outer: np.ndarray, single: np.ndarray, fold_of: np.ndarray, chosen: list):
        self.kind, self.outer, self.single, self.fold_of, self.chosen = kind, outer, single, fold_of, chosen

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, categories: np.ndarray | None = None) -> Precomputed:
        """`categories` is not used: the encoder and its stacked gbm learn critical against the rest."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold

        from critstep.distill.estimator import make_base

        rows = X[:, -1].astype(int)
        (k,) = set(range(FOLDS)) - set(self.fold_of[rows].tolist())
        inner = self.single[rows, FOLDS - self.fold_of[rows] - k]  # the other training fold's single encoder
        assert not np.isnan(inner).any() and not np.isnan(self.outer[self.fold_of == k]).any()
        slices = group_slices(groups)
        self.platt_ = LogisticRegression(C=1e4).fit(inner.reshape(-1, 1), y)
        p_enc = self.platt_.predict_proba(inner.reshape(-1, 1))[:, 1]
        features = X[:, :-1]
        if self.kind == "encoder":
            self.policy_ = fit_policy([p_enc[i] for i in slices], [y[i] for i in slices], modes=TRAIN_MODES)
        elif self.kind == "stacked":
            cols = np.zeros((len(y), 3))
            for i in slices:
                cols[i] = encoder_columns(inner[i])
            self.model_ = StepClassifier(ratio=0.3, random_state=0).fit(np.hstack([features, cols]), y, groups)
            self.policy_ = self.model_.policy_
        else:  # blend: the gbm's inner out-of-fold probabilities (its own folds and calibration) against the encoder's
            self.model_ = StepClassifier(ratio=0.3, random_state=0).fit(features, y, groups)
            raw = np.zeros(len(y))
            for a, b in GroupKFold(3).split(features, y, groups):
                raw[b] = make_base("hgb", 0).fit(features[a], y[a]).decision_function(features[b])
            p_gbm = self.model_._calibrate(raw)
            best = (-1.0, 0.0, None)
            for w in np.round(np.arange(0, 1.0001, 0.05), 2):
                p = (1 - w) * p_gbm + w * p_enc
                policy = fit_policy([p[i] for i in slices], [y[i] for i in slices], modes=TRAIN_MODES)
                f1 = max(policy.fit_f1[m] for m in TRAIN_MODES)
                if f1 > best[0] + 1e-9:
                    best = (f1, float(w), policy)
            _, self.weight_, self.policy_ = best
            self.chosen.append({"fold": k, "weight": self.weight_, "fit_f1": self.policy_.fit_f1})
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # the rows of one trajectory
        logits = self.outer[X[:, -1].astype(int)]
        if self.kind == "encoder":
            p = self.platt_.predict_proba(logits.reshape(-1, 1))[:, 1]
        elif self.kind == "stacked":
            p = self.model_.predict_proba(np.hstack([X[:, :-1], encoder_columns(logits)]))[:, 1]
        else:
            p_enc = self.platt_.predict_proba(logits.reshape(-1, 1))[:, 1]
            p = (1 - self.weight_) * self.model_.predict_proba(X[:, :-1])[:, 1] + self.weight_ * p_enc
        return np.column_stack([1 - p, p])


CANDIDATES = {"encoder": "encoder", "gbm+encoder": "stacked", "gbm+encoder-blend": "blend"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "critstep-encoder-candidate",
                        help="where the encoders' logits and timings are kept (outside the repository)")
    parser.add_argument("--score-only", action="store_true", help="score from the logits saved under --work")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    claim_results("agreement", args.out)  # its rows join agreement.py's
    corpus = read_trajectories(args.shared / "corpus.jsonl")
    labels = read_labels(args.shared / "seed_labels.jsonl", corpus)
    second = read_labels(args.shared / "seed_labels_second.jsonl", corpus)
    trajectories = labeled_trajectories(corpus, labels)
    gbm = dataset("gbm", trajectories, labels)  # the shipped recipe's features, rows in (trajectory, step) order
    protocol = PROTOCOLS["dev"]
    splits = cv_splits([t.env for t in trajectories], protocol["folds"], protocol["repeats"], protocol["seed"])
    fold_of_trajectory = {trajectories[i].id: k for k, (_, _, test) in enumerate(splits) for i in test}
    fold_of = np.array([fold_of_trajectory[tid] for tid, _ in gbm.index])
    if not args.score_only:  # a --work folder that is not empty and not this script's own is refused
        train_all(args, trajectories, gbm.y, fold_of, claim_output_dir(args.work, "encoder-candidate"))
    saved = np.load(args.work / "logits.npz")
    assert np.array_equal(saved["fold_of"], fold_of), "the saved logits come from other folds"
    meta = json.loads((args.work / "meta.json").read_text())
    rownum = np.arange(len(gbm.y), dtype=float).reshape(-1, 1)
    by_id = {t.id: t for t in trajectories}
    paired_ids = [i for i in second if i in by_id]
    results = read_result(args.out, "agreement")
    for name in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        kind = CANDIDATES[name]
        X = rownum if kind == "encoder" else np.hstack([gbm.X, rownum])
        data = StepDataset(X, gbm.categories, gbm.groups, gbm.index, gbm.trajectories)
        chosen: list = []
        start = time.perf_counter()
        cv = cross_validate(data, labels, protocol["folds"], repeats=protocol["repeats"], seed=protocol["seed"],
                            make=lambda kind=kind, chosen=chosen: Precomputed(kind, saved["outer"], saved["single"], fold_of, chosen))
        entry = summarize(cv) | {"trajectories": len(trajectories), "columns": int(X.shape[1] - 1), "cv_seconds": time.perf_counter() - start,
                                 "paired_44": {mode: paired_f1(cv["selections"][mode], labels, paired_ids) for mode in MODES},
                                 "encoder": {k: v for k, v in meta.items() if k != "limits"} | ({"blend_weights": chosen} if chosen else {})}
        results.setdefault("dev", {})[name] = entry
        print(table({"dev": {name: entry}}), flush=True)
        write_result(args.out, "agreement", results)


if __name__ == "__main__":
    main()
