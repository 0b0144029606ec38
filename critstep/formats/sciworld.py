"""ScienceWorld episodes as `history` lists of `{action, observation, score}` (SwiftSage logs).

Each action is a step; its observation and running score are the context that follows. Read-only:
a selection is written back as OpenAI messages.
"""

from __future__ import annotations

from typing import Any

from critstep.errors import InputError
from critstep.trajectory import Message, Origin, Trajectory


def _episode(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    inner = value.get("history")
    if isinstance(inner, dict) and isinstance(inner.get("history"), list):
        return inner
    if isinstance(inner, list) and "taskDescription" in value:
        return value
    return None


def matches(value: Any) -> bool:
    return _episode(value) is not None


def parse(value: dict[str, Any], origin: Origin, fallback_id: str) -> Trajectory:
    episode = _episode(value)
    assert episode is not None
    messages = [Message(role="user", content=str(episode.get("taskDescription", "")))]
    for i, turn in enumerate(episode["history"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("action"), str):
            raise InputError(f"history entry {i} has no 'action' text", origin.path, origin.line)
        messages.append(Message(role="assistant", content=turn["action"]))
        observation = str(turn.get("observation", ""))
        if "score" in turn:
            observation += f"\n(score: {turn['score']})"
        messages.append(Message(role="user", content=observation))
    name = episode.get("taskName", "task")
    variation = episode.get("variationIdx", fallback_id)
    last = episode["history"][-1] if episode["history"] else {}
    metadata = {
        "env": "sciworld",
        "task_name": name,
        "variation": variation,
        "success": str(last.get("isCompleted", "")).lower() == "true",
    }
    return Trajectory(id=f"{name}/var{variation}", messages=messages, metadata=metadata, origin=Origin("sciworld", origin.path, origin.line))
