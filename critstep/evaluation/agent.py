"""What an evaluated agent must do, whichever backend runs it.

Offline, `evaluate_trajectories` generates every step (or the given ones) of trajectories from
their gold prefixes (and, where the backend can, scores the gold turns' NLL). Live, `respond`
gives the next turn of a conversation; `reset_chat` starts a new episode. `timing` says where
the seconds went.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from critstep.trajectory import Trajectory


@dataclass
class StepOutput:
    """One evaluated step: the generated turn and, where scored, the gold turn's summed token NLL."""

    step: int
    generated: str
    nll_sum: float | None = None
    n_tokens: int | None = None
    tool_calls: list[dict[str, Any]] | None = None
    error: str | None = None


@dataclass
class Timing:
    """Seconds spent in forward passes over the context (NLL and prompt prefill) and in decoding,
    and the tokens each read or wrote."""

    forward_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0  # tokens read by forward passes (a cached prefix is not read again)
    generated_tokens: int = 0
    truncated_steps: int = 0
    errors: int = 0


class Agent(Protocol):
    timing: Timing

    def evaluate_trajectories(self, items: Iterable[tuple[Trajectory, Sequence[int] | None]]) -> Iterator[tuple[Trajectory, list[StepOutput]]]:
        """Generate (and score) the given steps (None: every step) of each trajectory; yields each
        trajectory with its outputs in step order, trajectories in input order."""

    def respond(self, messages: list[dict[str, Any]]) -> str: ...

    def reset_chat(self) -> None: ...
