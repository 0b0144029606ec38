"""Semantic step features from a sentence-embedding model (default `minilm`).

Each step is embedded with the observation it reacts to, the observation it causes and the task;
similarities between them say whether a step is new (novelty against earlier steps), on task,
and whether its outcome is new information.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from critstep.trajectory import Trajectory

MAX_CHARS = 600  # ~128 tokens: the head of an observation says what it is; longer costs time
MAX_TOKENS = 128
SIMILARITIES = [
    "sim_step_task",
    "sim_step_obs_before",
    "sim_step_obs_after",
    "sim_obs_after_task",
    "sim_step_prev_step",
    "sim_step_next_step",
    "step_novelty",
    "obs_after_novelty",
]
PARTS = ("step", "obs_before", "obs_after", "task")


def texts_of(trajectory: Trajectory) -> list[str]:
    """The texts to embed for one trajectory: per step (step, before, after), then the task."""
    out: list[str] = []
    for s in trajectory.steps():
        out += [s.text[:MAX_CHARS], (s.observation_before or "")[:MAX_CHARS], (s.observation_after or "")[:MAX_CHARS]]
    out.append(trajectory.task[:MAX_CHARS])
    return out


def embed_trajectories(model: Any, trajectories: Sequence[Trajectory], batch_size: int = 64) -> list[np.ndarray]:
    """Per trajectory an array (n_steps, 4, dim) of normalized embeddings of PARTS, in one batched call."""
    texts: list[str] = []
    bounds: list[tuple[int, int]] = []
    for t in trajectories:
        part = texts_of(t)
        bounds.append((len(texts), len(texts) + len(part)))
        texts += part
    # Each observation is usually both one step's "after" and the next one's "before", and
    # action-only environments repeat steps: embed each distinct text once.
    distinct = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(distinct)}
    # Empty strings (no observation) embed to a constant vector; the similarity features mask them.
    unique = model.encode(distinct, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    vectors = unique[[position[text] for text in texts]]
    out: list[np.ndarray] = []
    for t, (a, b) in zip(trajectories, bounds, strict=True):
        v = vectors[a:b]
        n = t.n_steps
        steps = v[: 3 * n].reshape(n, 3, v.shape[1])
        task = np.broadcast_to(v[-1], (n, 1, v.shape[1]))
        out.append(np.concatenate([steps, task], axis=1).astype(np.float32))
    return out


def similarity_features(trajectory: Trajectory, embeddings: np.ndarray) -> np.ndarray:
    """SIMILARITIES per step from the (n_steps, 4, dim) embeddings of `embed_trajectories`."""
    steps = trajectory.steps()
    n = len(steps)
    step, before, after, task = (embeddings[:, i] for i in range(4))
    has_before = np.array([bool(s.observation_before) for s in steps], dtype=np.float32)
    has_after = np.array([bool(s.observation_after) for s in steps], dtype=np.float32)
    rows = np.zeros((n, len(SIMILARITIES)), dtype=np.float32)
    if n == 0:
        return rows
    step_sim = step @ step.T
    after_sim = after @ after.T
    rows[:, 0] = (step * task).sum(1)
    rows[:, 1] = (step * before).sum(1) * has_before
    rows[:, 2] = (step * after).sum(1) * has_after
    rows[:, 3] = (after * task).sum(1) * has_after
    for k in range(n):
        rows[k, 4] = step_sim[k, k - 1] if k > 0 else 0.0
        rows[k, 5] = step_sim[k, k + 1] if k + 1 < n else 0.0
        rows[k, 6] = 1.0 - step_sim[k, :k].max() if k > 0 else 1.0
        rows[k, 7] = (1.0 - after_sim[k, :k].max() if k > 0 else 1.0) * has_after[k]
    return rows


def project(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """The step and outcome embeddings of (n, 4, dim) projected to `dims` each by a fixed Gaussian
    matrix (seeded, not fitted: nothing to save, nothing to leak across folds)."""
    if dims <= 0:
        return np.zeros((len(embeddings), 0), dtype=np.float32)
    matrix = np.random.default_rng(0).standard_normal((embeddings.shape[-1], dims)).astype(np.float32) / np.sqrt(dims)
    return np.hstack([embeddings[:, 0] @ matrix, embeddings[:, 2] @ matrix])


def projection_names(dims: int) -> list[str]:
    return [f"proj_{part}_{i}" for part in ("step", "obs_after") for i in range(max(0, dims))]
