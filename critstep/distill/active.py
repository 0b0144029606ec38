"""Active labeling: which unlabeled trajectories to send to the oracle next.

Oracle labels cost money, so each one should teach the distilled model as much as possible. Two
things make a trajectory worth labeling: the current model is unsure of its selection
(uncertainty), and it is unlike what is already labeled (diversity), so that a batch of
suggestions does not spend ten calls on ten near-copies of the same task.

`suggest` combines both as an uncertainty-weighted k-center greedy: each pick maximizes
uncertainty x distance to the nearest labeled-or-already-picked trajectory, in a trajectory
embedding space (the mean of the distilled features' step and task embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from critstep.io import write_jsonl
from critstep.selection import DEFAULT_RATIO, expected_disagreement, top_k
from critstep.trajectory import Trajectory

Scorer = Callable[[Sequence[Trajectory]], Mapping[str, np.ndarray]]
Embedder = Callable[[Sequence[Trajectory]], np.ndarray]


class Suggestion(NamedTuple):
    """One trajectory to label next, why, and its priority (higher = earlier)."""

    id: str
    score: float
    reason: str


def suggest(
    trajectories: Sequence[Trajectory],
    labeled_ids: Collection[str],
    n: int,
    scorer: Scorer,
    embedder: Embedder | None = None,
    ratio: float = DEFAULT_RATIO,
) -> list[Suggestion]:
    """The next `n` unlabeled trajectories worth an oracle call, best first.

    `scorer` gives calibrated step probabilities per trajectory id (`DistilledSelector.score` or
    an in-memory model's); `embedder` one vector per trajectory (`trajectory_embeddings`). Without
    an embedder the order is by uncertainty alone. Trajectories without steps have nothing to
    label and are never suggested; ties keep the input order.
    """
    labeled = set(labeled_ids)
    pool = [t for t in trajectories if t.id not in labeled and t.n_steps > 0]
    if n <= 0 or not pool:
        return []
    probs = scorer(pool)
    unc = np.array([expected_disagreement(probs[t.id], top_k(probs[t.id], ratio)) for t in pool])
    if embedder is None:
        order = np.argsort(-unc, kind="stable")[:n]
        return [Suggestion(pool[i].id, float(unc[i]), _reason(pool[i], unc[i], None)) for i in order]

    anchors = [t for t in trajectories if t.id in labeled and t.n_steps > 0]
    vectors = _normalize(embedder(pool + anchors))
    pool_v, anchor_v = vectors[: len(pool)], vectors[len(pool) :]
    # Cosine distance to the nearest labeled trajectory; with nothing labeled every point is "far".
    dist = (1 - pool_v @ anchor_v.T).min(axis=1) if len(anchor_v) else np.ones(len(pool))
    dist = np.clip(dist, 0.0, 2.0)
    out: list[Suggestion] = []
    taken = np.zeros(len(pool), dtype=bool)
    for _ in range(min(n, len(pool))):
        gain = np.where(taken, -np.inf, unc * dist)
        i = int(np.argmax(gain))  # first maximum: ties keep the input order
        out.append(Suggestion(pool[i].id, float(gain[i]), _reason(pool[i], unc[i], float(dist[i]))))
        taken[i] = True
        dist = np.minimum(dist, np.clip(1 - pool_v @ pool_v[i], 0.0, 2.0))
    return out


def _reason(t: Trajectory, unc: float, dist: float | None) -> str:
    text = f"{t.env}, {t.n_steps} steps: about {unc:.1f} step(s) expected to differ from the teacher"
    if dist is not None:
        text += f"; cosine distance {dist:.2f} to the nearest labeled or suggested trajectory"
    return text


def _normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def trajectory_embeddings(extractor: Any, trajectories: Sequence[Trajectory]) -> np.ndarray:
    """One vector per trajectory: the mean of its step, observation and task embeddings.

    Reuses the distilled model's semantic features (`FeatureExtractor.embeddings`, cached on
    disk), so suggestions cost no extra model pass.
    """
    per = extractor.embeddings(trajectories)
    dim = next((e.shape[-1] for e in per if e.size), 1)
    return np.stack([e.reshape(-1, e.shape[-1]).mean(axis=0) if e.size else np.zeros(dim, dtype=np.float32) for e in per])


def write_suggestions(path: str | Path, suggestions: Iterable[Suggestion]) -> None:
    """JSONL, best first: `{"rank", "id", "score", "reason"}` per line, written atomically."""
    write_jsonl(path, ({"rank": k, "id": s.id, "score": round(s.score, 6), "reason": s.reason} for k, s in enumerate(suggestions, start=1)))
