"""LM hidden states per step: what a small causal LM "thinks" at the end of a step and of its outcome.

The token group (`token.py`) reduces the LM's view of a step to a few NLL and entropy scalars; this
group keeps the model's representation itself. The trajectory is rendered once in ChatML (the
same rendering and budgets as the token group) and read in windows, ONE forward pass per window;
for every step the window holds the step and the observation that follows it whole (with a
quarter window of earlier context where it exists), and two positions are read out of two layers:

- the step's last token: the model's state after reading the step given everything before it;
- the outcome's last token: the same after it has also read what the step caused, which is what a
  teacher judging with hindsight sees.

Layers: the middle layer (probing studies find the most linearly decodable content there) and
the last. One array per trajectory, (n_steps, 4, hidden): [mid@step, mid@outcome, last@step,
last@outcome], stored in float16 in the feature cache. No context-free pass: half the token
group's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from critstep.distill.features.token import Rendered, WindowedLM, windows
from critstep.trajectory import Trajectory

READOUTS = ("mid_step", "mid_outcome", "last_step", "last_outcome")


def outcome_spans(rendered: Rendered) -> list[tuple[int, int]]:
    """Per step, its span extended over the messages it caused, up to the next step (or the end)."""
    return [(a, end) for (a, _), end in zip(rendered.spans, rendered.outcome_ends, strict=True)]


class HiddenStateReader(WindowedLM):
    """Reads `READOUTS` for every step of a trajectory; `read(trajectories)` gives one
    (n_steps, len(READOUTS), hidden) float16 array each."""

    def __init__(self, model: Any, tokenizer: Any, window_tokens: int, message_tokens: int, step_tokens: int):
        super().__init__(model, tokenizer, window_tokens, message_tokens, step_tokens)
        n_layers = int(model.config.num_hidden_layers)
        self.layers = (n_layers // 2, n_layers)  # indices into output.hidden_states (0 = embeddings)

    def read(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
        return [self.read_one(t) for t in trajectories]

    def read_one(self, trajectory: Trajectory) -> np.ndarray:
        import torch

        r = self.render(trajectory)
        spans = outcome_spans(r)
        hidden = int(self.model.config.hidden_size)
        out = np.zeros((len(spans), len(READOUTS), hidden), dtype=np.float16)
        if not spans:
            return out
        with torch.inference_mode():
            for start, members in windows(r, self.window_tokens, spans):
                end = min(len(r.ids), start + self.window_tokens)
                ids = torch.tensor([r.ids[start:end]], device=self.device)
                states = self.model(input_ids=ids, output_hidden_states=True).hidden_states
                self.tokens_processed += end - start
                for k in members:
                    step_end = min(r.spans[k][1], end) - 1 - start
                    outcome_end = min(spans[k][1], end) - 1 - start
                    positions = [step_end, outcome_end]
                    for j, layer in enumerate(self.layers):
                        vectors = states[layer][0, positions].float().cpu().numpy()
                        out[k, 2 * j : 2 * j + 2] = vectors.astype(np.float16)
        return out


def project(states: np.ndarray, dims: int, readouts: Sequence[str] = ("mid_step", "mid_outcome")) -> np.ndarray:
    """The chosen readouts of (n, 4, hidden) hidden states, each reduced to `dims` by a fixed
    seeded Gaussian projection (nothing fitted, nothing to save), concatenated."""
    matrix = np.random.default_rng(0).standard_normal((states.shape[-1], dims)).astype(np.float32) / np.sqrt(dims)
    parts = [states[:, READOUTS.index(r)].astype(np.float32) for r in readouts]
    # Hidden states carry a few huge outlier dimensions; normalizing each vector keeps them from
    # dominating the projection.
    parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-6) for p in parts]
    return np.hstack([p @ matrix for p in parts]) if parts else np.zeros((len(states), 0), dtype=np.float32)


def projection_names(dims: int) -> list[str]:
    return [f"lm_{readout}_{i}" for readout in ("mid_step", "mid_outcome") for i in range(dims)]
