"""ReAct-style text logs (ReAct's ALFWorld prompts, KnowAgent's trajectories).

Agent lines start with `> `; the lines after them, up to the next agent line, are the
observation; the lines before the first agent line state the task. Consecutive agent lines with
no observation between them (a thought followed by its action) form one step. Read-only: a
selection is written back as OpenAI messages.
"""

from __future__ import annotations

from typing import Any

from critstep.errors import InputError
from critstep.trajectory import Message, Origin, Trajectory, record_id

AGENT_PREFIX = "> "


def matches(value: Any) -> bool:
    if isinstance(value, str):
        return AGENT_PREFIX in value
    return isinstance(value, dict) and isinstance(value.get("traj"), str)


def parse(value: str | dict[str, Any], origin: Origin, fallback_id: str) -> Trajectory:
    text = value if isinstance(value, str) else value["traj"]
    metadata: dict[str, Any] = {}
    ident = fallback_id
    if isinstance(value, dict):
        ident = record_id(value["id"] if value.get("id") is not None else value.get("name"), origin, fallback_id)
        metadata = {k: v for k, v in value.items() if k not in ("traj", "id", "name")}
        if "result" in metadata and "success" not in metadata:
            metadata["success"] = bool(metadata["result"])
    messages = parse_text(text)
    if not any(m.role == "assistant" for m in messages):
        raise InputError("text log has no agent line (starting with '> ')", origin.path, origin.line)
    return Trajectory(id=ident, messages=messages, metadata=metadata, origin=Origin("react", origin.path, origin.line))


def parse_text(text: str) -> list[Message]:
    messages: list[Message] = []
    for line in text.splitlines():
        is_agent = line.startswith(AGENT_PREFIX)
        role = "assistant" if is_agent else "user"
        body = line[len(AGENT_PREFIX) :] if is_agent else line
        if messages and messages[-1].role == role:
            messages[-1].content += "\n" + body
        else:
            messages.append(Message(role=role, content=body))
    for m in messages:
        m.content = m.content.strip("\n")
    return [m for m in messages if m.content or m.role == "assistant"]
