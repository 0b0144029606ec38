"""The interface a live environment implements for `critstep eval --env`.

An adapter turns one environment into what the agent loop needs: the episodes of a fixed suite,
`reset` (the task, as the first user message), `step` (an action in, the observation, score and
whether it ended out), the actions valid right now, and the observation written the way the
training trajectories show it. Adding an environment is one subclass registered in
`critstep.evaluation.envs.ENVS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode of a suite: a task and its variation (ScienceWorld's word; a seed elsewhere)."""

    task: str
    variation: int


@dataclass(frozen=True)
class StepResult:
    """What the environment answered to one action.

    `score` is the environment's running score on a 0-100 scale; `valid` is False when the
    environment could not parse or apply the action (the observation then says so, and the agent
    sees it as it would any other observation).
    """

    observation: str
    score: float
    done: bool
    valid: bool


class EnvAdapter(ABC):
    name: str
    trajectory_env: str  # the `env` of this environment's training trajectories (action syntax)
    system_prompt: str  # the system message of those trajectories

    @abstractmethod
    def suite(self, tasks: list[str] | None = None, episodes_per_task: int | None = None) -> list[EpisodeSpec]:
        """The fixed episodes to evaluate on (all suite tasks by default)."""

    @abstractmethod
    def reset(self, episode: EpisodeSpec) -> str:
        """Start `episode`; returns the task description (the first user message)."""

    @abstractmethod
    def step(self, action: str) -> StepResult: ...

    @abstractmethod
    def valid_actions(self) -> list[str]:
        """Actions the environment accepts in the current state."""

    @abstractmethod
    def observation_message(self, result: StepResult) -> str:
        """The user message the agent sees after an action, laid out as in the training data."""

    @abstractmethod
    def close(self) -> None:
        """Release the environment's resources (processes, servers)."""
