"""Baseline selectors: every step, random steps, and the paper's perplexity baseline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from critstep.distill.features import FeatureConfig, FeatureExtractor
from critstep.distill.features import token as token_features
from critstep.models import DEFAULT_CAUSAL_LM
from critstep.selection import DEFAULT_RATIO, Selection, top_k
from critstep.selector.base import Selector
from critstep.trajectory import Trajectory


class AllSelector(Selector):
    """Every step: ordinary supervised finetuning, the baseline ATLaS improves on. Ignores the ratio."""

    name = "all"

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        return {t.id: Selection(t.id, list(range(t.n_steps)), scores=[1.0] * t.n_steps) for t in trajectories}


class RandomSelector(Selector):
    """`step_cap` steps drawn uniformly. Seeded per trajectory id, so a trajectory's draw does not
    depend on which other trajectories are in the file."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        import zlib

        out: dict[str, Selection] = {}
        for t in trajectories:
            rng = np.random.default_rng([self.seed, zlib.crc32(t.id.encode())])
            scores = rng.random(t.n_steps)
            out[t.id] = Selection(t.id, top_k(scores, ratio), scores=[float(s) for s in scores])
        return out


class PerplexitySelector(Selector):
    """The steps the small LM finds most surprising (highest mean NLL given the trajectory prefix).

    It shares the token-feature pass and its cache with the distilled selector, so running both on
    the same data pays for the LM once.
    """

    name = "perplexity"

    def __init__(
        self,
        lm: str = DEFAULT_CAUSAL_LM,
        device: str | None = None,
        window_tokens: int = token_features.DEFAULT_WINDOW_TOKENS,
        dtype: str = token_features.DEFAULT_DTYPE,
        cache: str | Path | None = "default",
        progress: bool = False,
    ):
        config = FeatureConfig(groups=("token",), lm=lm, window_tokens=window_tokens, dtype=dtype)
        self.extractor = FeatureExtractor(config, device=device, cache=cache, progress=progress)

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        out: dict[str, Selection] = {}
        for t, scores in zip(trajectories, self.extractor.token_scores(trajectories), strict=True):
            nll = scores[:, token_features.NAMES.index("nll_mean")]
            out[t.id] = Selection(t.id, top_k(nll, ratio) if t.n_steps else [], scores=[float(s) for s in nll])
        return out
