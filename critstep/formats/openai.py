"""OpenAI chat `messages` records (FireAct, tau-bench's `traj`, critstep's own corpus).

On writing, each assistant message carries `"weight": 1|0` (axolotl's `message_field_training`)
and the record carries `"critical_steps"`.
"""

from __future__ import annotations

from typing import Any

from critstep.errors import InputError
from critstep.trajectory import ROLES, Message, Origin, Trajectory, record_id

MESSAGE_KEYS = ("messages", "traj")
_KNOWN = {"role", "content", "tool_calls", "tool_call_id", "name", "weight"}


def matches(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(value.get(k), list) for k in MESSAGE_KEYS)


def parse(value: dict[str, Any], origin: Origin, fallback_id: str) -> Trajectory:
    key = next(k for k in MESSAGE_KEYS if isinstance(value.get(k), list))
    messages = [_parse_message(m, i, origin) for i, m in enumerate(value[key])]
    metadata = {k: v for k, v in value.items() if k not in (key, "id")}
    if "success" not in metadata and "reward" in metadata:
        metadata["success"] = metadata["reward"] == 1
    return Trajectory(
        id=record_id(value.get("id"), origin, _tau_id(value) or fallback_id),
        messages=messages,
        metadata=metadata,
        origin=Origin("openai", origin.path, origin.line, messages_key=key),
    )


def _tau_id(value: dict[str, Any]) -> str | None:
    if "task_id" in value:
        return f"task{value['task_id']}/trial{value.get('trial', 0)}"
    return None


def _parse_message(m: Any, i: int, origin: Origin) -> Message:
    if not isinstance(m, dict):
        raise InputError(f"message {i} is not an object", origin.path, origin.line)
    role = m.get("role")
    if role not in ROLES:
        raise InputError(f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})", origin.path, origin.line)
    content = m.get("content")
    tool_calls = _tool_calls(m.get("tool_calls"), i, role, origin)
    if content is None and not tool_calls:
        raise InputError(f"message {i} ({role}) has neither content nor tool_calls", origin.path, origin.line)
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    elif content is not None and not isinstance(content, str):
        raise InputError(f"message {i} ({role}) has content of type {type(content).__name__}", origin.path, origin.line)
    weight = m.get("weight")
    return Message(
        role=role,
        content=content or "",
        tool_calls=tool_calls,
        tool_call_id=m.get("tool_call_id"),
        name=m.get("name"),
        train=None if weight is None else bool(weight),
        extra={k: v for k, v in m.items() if k not in _KNOWN},
    )


def _tool_calls(value: Any, i: int, role: str, origin: Origin) -> list[dict[str, Any]] | None:
    """OpenAI `tool_calls`: a list of calls, each naming its function (`{"function": {"name",
    "arguments"}}`, or the flat `{"name", "arguments"}`), arguments as a JSON string or an object."""
    if value is None or value == []:
        return None

    def bad(what: str) -> InputError:
        return InputError(f"message {i} ({role}): {what}", origin.path, origin.line)

    if not isinstance(value, list):
        raise bad(f"tool_calls must be a list of calls, got {type(value).__name__}")
    for j, call in enumerate(value):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise bad(f"tool call {j} is not an object with a function, got {call!r:.60}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"tool call {j} has no function name")
        arguments = fn.get("arguments")
        if arguments is not None and not isinstance(arguments, (str, dict)):
            raise bad(f"tool call {j} ({name}) has arguments of type {type(arguments).__name__} (expected a JSON string or an object)")
    return value


def chat_message(m: Message) -> dict[str, Any]:
    """A critstep message as an OpenAI chat message: role, content and the tool fields it has (what
    the writer starts each record's message from, and what servers and live episodes exchange)."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    return d


def render(trajectory: Trajectory, flags: list[bool] | None) -> dict[str, Any]:
    """The record for `trajectory`; `flags[i]` is the training flag of message i, if given."""
    key = trajectory.origin.messages_key if trajectory.origin else "messages"
    out_messages = []
    for i, m in enumerate(trajectory.messages):
        d = chat_message(m)
        d.update(m.extra)
        flag = flags[i] if flags is not None else m.train
        if m.role == "assistant" and flag is not None:
            d["weight"] = int(flag)
        out_messages.append(d)
    return {"id": trajectory.id, **trajectory.metadata, key: out_messages}
