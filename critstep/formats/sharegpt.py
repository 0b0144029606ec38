"""ShareGPT-style `conversations` records: ETO/AgentGym (`from`/`value`, per-turn `loss`) and
AgentInstruct (`role`/`content`).

The instruction acknowledgement ("OK" answered to the instruction, before the task) is an
assistant turn kept as context, never a step. On writing, assistant turns carry
`"loss": true|false` and the record carries `"critical_steps"`.
"""

from __future__ import annotations

import re
from typing import Any

from critstep.errors import InputError
from critstep.trajectory import Message, Origin, Trajectory, record_id

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}
_OUT_ROLE = {"from": {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}}
_ACK = re.compile(r"^\s*(ok|okay|sure|understood|got it|i('ve| have)? understood)\b", re.IGNORECASE)
_ACK_MAX_CHARS = 120
# An "OK" that already acts ("OK. Action: search[...]") is a step, not an acknowledgement.
_ACTS = re.compile(r"(^|\n)\s*(action|act|thought|think)\s*:|\w\[|^\s*>", re.IGNORECASE)


def matches(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("conversations"), list)


def parse(value: dict[str, Any], origin: Origin, fallback_id: str) -> Trajectory:
    turns = value["conversations"]
    role_key, content_key = ("from", "value")
    if turns and isinstance(turns[0], dict) and "role" in turns[0]:
        role_key, content_key = ("role", "content")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise InputError(f"turn {i} is not an object", origin.path, origin.line)
        raw_role = t.get(role_key)
        role = ROLE_MAP.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise InputError(f"turn {i} has unknown role {raw_role!r} (expected one of {', '.join(ROLE_MAP)})", origin.path, origin.line)
        content = t.get(content_key)
        if not isinstance(content, str):
            raise InputError(f"turn {i} ({raw_role}) has no {content_key!r} text", origin.path, origin.line)
        loss = t.get("loss")
        messages.append(
            Message(
                role=role,
                content=content,
                train=None if loss is None else bool(loss),
                extra={k: v for k, v in t.items() if k not in (role_key, content_key, "loss")},
            )
        )
    mark_acknowledgement(messages)
    metadata = {k: v for k, v in value.items() if k not in ("conversations", "id")}
    return Trajectory(
        id=record_id(value.get("id"), origin, fallback_id),
        messages=messages,
        metadata=metadata,
        origin=Origin("sharegpt", origin.path, origin.line, "conversations", role_key, content_key),
    )


def mark_acknowledgement(messages: list[Message]) -> None:
    """Flag the first assistant turn if it only acknowledges the instruction before the task."""
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first is None or first + 1 >= len(messages) or messages[first + 1].role != "user":
        return
    if sum(m.role == "user" for m in messages[:first]) != 1:
        return
    m = messages[first]
    if len(m.content) <= _ACK_MAX_CHARS and _ACK.match(m.content) and not _ACTS.search(m.content):
        m.acknowledgement = True


def render(trajectory: Trajectory, flags: list[bool] | None) -> dict[str, Any]:
    origin = trajectory.origin
    role_key, content_key = (origin.role_key, origin.content_key) if origin and origin.format == "sharegpt" else ("from", "value")
    turns = []
    for i, m in enumerate(trajectory.messages):
        role = _OUT_ROLE.get(role_key, {}).get(m.role, m.role)
        d: dict[str, Any] = {role_key: role, content_key: m.text()}
        d.update(m.extra)
        flag = flags[i] if flags is not None else m.train
        if m.role == "assistant" and flag is not None:
            d["loss"] = bool(flag)
        turns.append(d)
    return {"id": trajectory.id, **trajectory.metadata, "conversations": turns}
