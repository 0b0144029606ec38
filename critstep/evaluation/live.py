"""Live episodes: the agent acts in an environment until the task ends or the step limit is hit.

The conversation is laid out as the agent was tuned on it: the environment's system prompt, the
task as the first user message, then the agent's reply (its action) and the environment's
observation, turn after turn. An action the environment cannot parse is counted as invalid and its
answer ("No known action matches that input.") goes back to the agent like any observation;
nothing an agent says stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from critstep.evaluation.actions import THINK, parse_action
from critstep.evaluation.agent import Agent
from critstep.evaluation.envs.base import EnvAdapter, EpisodeSpec
from critstep.evaluation.stats import interval, ratio_of, resample_weights


@dataclass
class Episode:
    """The outcome of one episode; `score` is the final score clipped at 0 (ScienceWorld marks a
    failed task with a negative score, kept in `raw_score`)."""

    task: str
    variation: int
    score: float
    raw_score: float
    success: bool
    steps: int
    invalid_actions: int
    end: str  # "done" (the environment ended it) or "step_limit"
    seconds: float
    transcript: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "transcript"}


def env_action(env: EnvAdapter, reply: str) -> str:
    """The command sent to the environment: the reply's action in the env's syntax (its last
    command line), or the reply as it is when it holds none, for the environment to reject."""
    action = parse_action(env.trajectory_env, reply)
    return reply.strip() if action.name == THINK else action.text


def run_episode(env: EnvAdapter, agent: Agent, episode: EpisodeSpec, max_steps: int) -> Episode:
    started = time.perf_counter()
    task = env.reset(episode)
    agent.reset_chat()
    messages: list[dict[str, Any]] = [{"role": "system", "content": env.system_prompt}, {"role": "user", "content": task}]
    transcript: list[dict[str, Any]] = []
    score, done, invalid = 0.0, False, 0
    while len(transcript) < max_steps and not done:
        reply = agent.respond(messages)
        action = env_action(env, reply)
        result = env.step(action)
        invalid += not result.valid
        score, done = result.score, result.done
        observation = env.observation_message(result)
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": observation}]
        transcript.append({"reply": reply, "action": action, "observation": result.observation, "score": result.score, "valid": result.valid})
    return Episode(
        task=episode.task,
        variation=episode.variation,
        score=max(0.0, score),
        raw_score=score,
        success=done and score >= 100,
        steps=len(transcript),
        invalid_actions=invalid,
        end="done" if done else "step_limit",
        seconds=time.perf_counter() - started,
        transcript=transcript,
    )


def run_live(
    env: EnvAdapter,
    agent: Agent,
    episodes: Sequence[EpisodeSpec],
    max_steps: int,
    progress: bool = True,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    from tqdm.auto import tqdm

    out: list[Episode] = []
    bar = tqdm(episodes, unit="episode", desc=f"eval {env.name}", disable=not progress)
    for spec in bar:
        bar.set_postfix(task=f"{spec.task}/{spec.variation}")
        episode = run_episode(env, agent, spec, max_steps)
        out.append(episode)
        if on_episode is not None:
            on_episode(episode)
    bar.close()
    return out


def summarize_live(episodes: Sequence[Episode], seed: int = 0) -> dict[str, Any]:
    """Means over episodes (overall and per task), the score's with a bootstrap 95% interval."""

    def means(group: Sequence[Episode]) -> dict[str, Any]:
        n = len(group)
        score = ratio_of([(e.score, 1) for e in group])
        return {
            "score": score.value,
            "success": sum(e.success for e in group) / n if n else None,
            "steps": sum(e.steps for e in group) / n if n else None,
            "invalid_actions": sum(e.invalid_actions for e in group) / n if n else None,
            "episodes": n,
            "score_ci95": interval(score, resample_weights(n, seed=seed)),
        }

    tasks = list(dict.fromkeys(e.task for e in episodes))
    return {"mean": means(episodes), "per_task": {t: means([e for e in episodes if e.task == t]) for t in tasks}}
