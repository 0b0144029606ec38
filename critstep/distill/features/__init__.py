"""Step features for the distilled selector: semantic, token-level, LM hidden-state, structural and progress groups.

`FeatureExtractor(config).transform(trajectories)` returns one row per step and the
(trajectory id, step) of each row. Scalar features are also given with their neighbours'
values and their rank within the trajectory, because "critical" is relative: the step that
finally makes progress matters more than the five before it that look alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from critstep.distill.features import hidden, progress, semantic, structural, token
from critstep.distill.features.cache import FeatureCache, content_key
from critstep.errors import ConfigError
from critstep.models import DEFAULT_CAUSAL_LM, DEFAULT_SENTENCE_MODEL, cache_dir
from critstep.trajectory import Trajectory

GROUPS = ("semantic", "token", "hidden", "structural", "progress")
StepIndex = list[tuple[str, int]]


def parse_groups(value: str | Sequence[str]) -> tuple[str, ...]:
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [v for v in items if v not in GROUPS]
    if unknown or not items:
        raise ConfigError(f"unknown feature group(s) {unknown or value!r} (choose from {', '.join(GROUPS)})")
    return tuple(g for g in GROUPS if g in items)


@dataclass(frozen=True)
class FeatureConfig:
    """Everything the features depend on; saved with a model so selection recomputes them alike."""

    # Chosen on the development split of the seed labels (benchmarks/agreement.py): progress
    # features add agreement at no model cost; the LM's token and hidden-state features cost
    # 10x and more and did not add agreement, so they are opt-in.
    groups: tuple[str, ...] = ("semantic", "structural", "progress")
    embedder: str = DEFAULT_SENTENCE_MODEL
    lm: str = DEFAULT_CAUSAL_LM
    window_tokens: int = token.DEFAULT_WINDOW_TOKENS
    message_tokens: int = token.DEFAULT_MESSAGE_TOKENS
    step_tokens: int = token.DEFAULT_STEP_TOKENS
    dtype: str = token.DEFAULT_DTYPE  # of both models; bf16 is ~2.5x faster on CPUs with bf16 instructions
    # Raw embeddings overfit 100-odd labeled trajectories; a fixed random projection of the step
    # and outcome embeddings to this many dims each (0: similarities only) keeps some content.
    embedding_dims: int = 0
    # LM hidden states (group "hidden"): each of the step and outcome readouts of the middle layer
    # projected to this many dims by a fixed random matrix.
    hidden_dims: int = 32
    context: bool = True  # neighbour values and within-trajectory ranks of the scalar features
    # The structural group's hashed action/tool names: a vocabulary of one env that means nothing
    # in another. Without them agreement was as high on the development split, and transfer to
    # unseen envs is the point; models saved before this setting existed had them.
    action_hashes: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["groups"] = list(self.groups)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        d = dict(d)
        d["groups"] = parse_groups(d.get("groups", cls.groups))  # an unknown group fails here, not after the features
        d.setdefault("action_hashes", True)  # saved before the setting existed: they had them
        return cls(**d)


@dataclass
class Block:
    """One group's features for one trajectory: the matrix and which of its columns are scalars."""

    values: np.ndarray
    names: list[str]
    scalar: list[bool] = field(default_factory=list)


class FeatureExtractor:
    """Computes (and caches) the configured feature groups; models load on first use only."""

    def __init__(
        self, config: FeatureConfig | None = None, device: str | None = None, cache: str | Path | None = "default", progress: bool = False
    ):
        self.config = config or FeatureConfig()
        self.device = device
        self.progress = progress  # a bar on stderr while a model computes features that are not cached
        self.cache_root = cache_dir() / "features" if cache == "default" else cache
        self._embedder: Any = None
        self._scorer: token.TokenScorer | None = None
        self._reader: hidden.HiddenStateReader | None = None

    # -- models, loaded lazily so structural-only runs never import torch -----------------------
    def embedder(self) -> Any:
        if self._embedder is None:
            from critstep.models import load_sentence_model

            self._embedder = load_sentence_model(self.config.embedder, device=self.device)
            self._embedder.max_seq_length = min(self._embedder.max_seq_length or semantic.MAX_TOKENS, semantic.MAX_TOKENS)
            self._embedder.to(self._torch_dtype())
        return self._embedder

    def scorer(self) -> token.TokenScorer:
        if self._scorer is None:
            from critstep.models import load_causal_lm

            c = self.config
            model, tokenizer = load_causal_lm(c.lm, device=self.device, dtype=self._torch_dtype())
            self._scorer = token.TokenScorer(model, tokenizer, c.window_tokens, c.message_tokens, c.step_tokens)
        return self._scorer

    def reader(self) -> hidden.HiddenStateReader:
        if self._reader is None:
            c = self.config
            scorer = self.scorer()
            self._reader = hidden.HiddenStateReader(scorer.model, scorer.tokenizer, c.window_tokens, c.message_tokens, c.step_tokens)
        return self._reader

    def _torch_dtype(self) -> Any:
        import torch

        dtype = getattr(torch, self.config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"unknown torch dtype {self.config.dtype!r} (e.g. bfloat16, float32)")
        return dtype

    # -- per group ------------------------------------------------------------------------------
    def _settings(self, group: str) -> tuple:
        c = self.config
        if group == "semantic":
            return (c.embedder, c.dtype, semantic.MAX_CHARS, semantic.MAX_TOKENS)
        return (c.lm, c.dtype, c.window_tokens, c.message_tokens, c.step_tokens)

    def is_cached(self, group: str, trajectory: Trajectory) -> bool:
        """Whether `group`'s features of `trajectory` are in the cache (no model needed)."""
        return FeatureCache(self.cache_root, group).get(content_key(trajectory, group, *self._settings(group))) is not None

    def _cached(self, group: str, trajectories: Sequence[Trajectory], compute: Callable) -> list[np.ndarray]:
        cache = FeatureCache(self.cache_root, group)
        keys = [content_key(t, group, *self._settings(group)) for t in trajectories]
        out: list[np.ndarray | None] = [cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            import sys

            from tqdm import tqdm

            # In chunks, so the cache keeps what is done if the run stops, and a bar can move.
            chunk = 32 if group == "semantic" else 4
            with tqdm(total=len(missing), desc=f"{group} features", unit="traj", disable=not self.progress, file=sys.stderr) as bar:
                for a in range(0, len(missing), chunk):
                    part = missing[a : a + chunk]
                    for i, value in zip(part, compute([trajectories[i] for i in part]), strict=True):
                        cache.put(keys[i], value)
                        out[i] = value
                    bar.update(len(part))
        return [v for v in out if v is not None]

    def embeddings(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
        return self._cached("semantic", trajectories, lambda ts: semantic.embed_trajectories(self.embedder(), ts))

    def token_scores(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
        return self._cached("token", trajectories, lambda ts: self.scorer().score(ts))

    def hidden_states(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
        """Per trajectory (n_steps, 4, hidden) float16: `hidden.READOUTS` of the LM."""
        return self._cached("hidden", trajectories, lambda ts: self.reader().read(ts))

    def blocks(self, trajectories: Sequence[Trajectory]) -> list[list[Block]]:
        """Per trajectory, one Block per configured group (in GROUPS order)."""
        per: list[list[Block]] = [[] for _ in trajectories]
        groups = self.config.groups
        if "semantic" in groups:
            for row, t, emb in zip(per, trajectories, self.embeddings(trajectories), strict=True):
                sims = semantic.similarity_features(t, emb)
                vectors = semantic.project(emb, self.config.embedding_dims)
                names = semantic.projection_names(self.config.embedding_dims) + semantic.SIMILARITIES
                row.append(Block(np.hstack([vectors, sims]), names, [False] * vectors.shape[1] + [True] * sims.shape[1]))
        if "token" in groups:
            for row, scores in zip(per, self.token_scores(trajectories), strict=True):
                row.append(Block(scores, list(token.NAMES), [True] * len(token.NAMES)))
        if "hidden" in groups:
            dims = self.config.hidden_dims
            for row, states in zip(per, self.hidden_states(trajectories), strict=True):
                row.append(Block(hidden.project(states, dims), hidden.projection_names(dims), [False] * 2 * dims))
        if "structural" in groups:
            names = self._structural_names()
            for row, t in zip(per, trajectories, strict=True):
                values = structural.structural_features(t)[:, : len(names)]
                row.append(Block(values, names, [not n.startswith("action_hash_") for n in names]))
        if "progress" in groups:
            for row, t in zip(per, trajectories, strict=True):
                row.append(Block(progress.progress_features(t), list(progress.NAMES), [True] * len(progress.NAMES)))
        return per

    def transform(self, trajectories: Sequence[Trajectory]) -> tuple[np.ndarray, StepIndex]:
        """(X, step index): one row per step of every trajectory, in order."""
        rows: list[np.ndarray] = []
        index: StepIndex = []
        width = None
        for t, blocks in zip(trajectories, self.blocks(trajectories), strict=True):
            if t.n_steps == 0:
                continue
            x = np.hstack([_with_context(b) if self.config.context else b.values for b in blocks]).astype(np.float32)
            width = x.shape[1]
            rows.append(x)
            index += [(t.id, k) for k in range(t.n_steps)]
        if not rows:
            return np.zeros((0, width or len(self.feature_names())), dtype=np.float32), index
        return np.vstack(rows), index

    def _structural_names(self) -> list[str]:
        # the hashed action names come last in structural.NAMES
        return [n for n in structural.NAMES if self.config.action_hashes or not n.startswith("action_hash_")]

    def feature_names(self) -> list[str]:
        """Column names of `transform`'s X (no model is loaded)."""
        names: list[str] = []
        for group in self.config.groups:
            if group == "semantic":
                base = semantic.projection_names(self.config.embedding_dims) + semantic.SIMILARITIES
                scalar = [n in semantic.SIMILARITIES for n in base]
            elif group == "token":
                base, scalar = list(token.NAMES), [True] * len(token.NAMES)
            elif group == "hidden":
                base = hidden.projection_names(self.config.hidden_dims)
                scalar = [False] * len(base)
            elif group == "progress":
                base, scalar = list(progress.NAMES), [True] * len(progress.NAMES)
            else:
                base = self._structural_names()
                scalar = [not n.startswith("action_hash_") for n in base]
            names += base
            if self.config.context:
                scalars = [n for n, s in zip(base, scalar, strict=True) if s]
                names += [f"{n}@{suffix}" for suffix in CONTEXT_SUFFIXES for n in scalars]
        return names


CONTEXT_SUFFIXES = ("prev", "next", "rank", "dev")


def _with_context(block: Block) -> np.ndarray:
    """The block plus, for its scalar columns: previous and next step's value, the rank within the
    trajectory (0..1) and the deviation from the trajectory mean."""
    v = block.values
    s = v[:, np.array(block.scalar, dtype=bool)] if any(block.scalar) else v[:, :0]
    n = len(s)
    prev = np.vstack([np.zeros((1, s.shape[1]), dtype=s.dtype), s[:-1]]) if n else s
    nxt = np.vstack([s[1:], np.zeros((1, s.shape[1]), dtype=s.dtype)]) if n else s
    rank = (s.argsort(0, kind="stable").argsort(0, kind="stable") / max(1, n - 1)).astype(np.float32)
    dev = s - s.mean(0, keepdims=True)
    return np.hstack([v, prev, nxt, rank, dev])
