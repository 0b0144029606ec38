"""Agent Data Protocol records (neulab/agent-data-protocol, schema 1.x): `schema_version`, `id`,
`content` (a list of actions and observations, each with its `class_`) and `details`.

Mapping to messages, so features and the tuner see what the agent saw and said:

- `text_observation` -> a user message (`source` user), a tool message (`source` environment with
  a `tool_call_id`), a user message for any other environment text, a system message (`source`
  system), or an assistant message (`source` agent/assistant: a thought without an action);
- `message_action` -> an assistant message with its `content`;
- `api_action` -> an assistant message whose content is the `description` (the thought) and whose
  one tool call is `function(kwargs)`;
- `code_action` -> the same, with the `language` as the call's name and the code as its arguments;
- `image_observation`, `web_observation` -> user/tool messages with the text they carry (the
  accessibility tree or HTML; nothing for an image).

Every action is one step. Fields the mapping does not use (`source`, `reward`,
`reasoning_content`, `name`, ...) are kept under the message's `adp` key, so writing back gives the
record that was read. The schema forbids extra keys, so the selection goes into `details`
(`critical_steps`, `step_scores`), the one free-form field.
"""

from __future__ import annotations

import json
from typing import Any

from critstep.errors import ConfigError, InputError
from critstep.formats.sharegpt import mark_acknowledgement
from critstep.trajectory import Message, Origin, Trajectory

SCHEMA_VERSION = "1.5.0"  # the version written for trajectories that were not read from ADP
ACTIONS = ("message_action", "api_action", "code_action")
OBSERVATIONS = ("text_observation", "image_observation", "web_observation")
_TOP_LEVEL = ("schema_version", "available_apis", "available_custom_tools", "available_code_languages")
_ROLE_OF_SOURCE = {"user": "user", "system": "system", "agent": "assistant", "assistant": "assistant"}


def matches(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("content"), list) or "id" not in value:
        return False
    items = value["content"]
    return "schema_version" in value or (bool(items) and all(isinstance(i, dict) and "class_" in i for i in items))


def parse(value: dict[str, Any], origin: Origin, fallback_id: str) -> Trajectory:
    messages = [_parse_item(item, i, origin) for i, item in enumerate(value["content"])]
    mark_acknowledgement(messages)  # AgentInstruct's "OK." before the task is context, as in ShareGPT
    details = value.get("details") or {}
    if not isinstance(details, dict):
        raise InputError("details is not an object", origin.path, origin.line)
    metadata = {k: value[k] for k in _TOP_LEVEL if k in value}
    metadata.update(details)
    return Trajectory(id=str(value.get("id") or fallback_id), messages=messages, metadata=metadata,
                      origin=Origin("adp", origin.path, origin.line, messages_key="content"))


def _parse_item(item: Any, i: int, origin: Origin) -> Message:
    if not isinstance(item, dict):
        raise InputError(f"content item {i} is not an object", origin.path, origin.line)
    kind = item.get("class_")
    keep = {k: v for k, v in item.items() if k not in ("content", "tool_call_id", "name", "description", "function", "kwargs", "language")}
    if kind == "text_observation":
        text = item.get("content")
        if not isinstance(text, str):
            raise InputError(f"content item {i} (text_observation) has no 'content' text", origin.path, origin.line)
        source = str(item.get("source", "user"))
        role = _ROLE_OF_SOURCE.get(source) or ("tool" if item.get("tool_call_id") else "user")
        if "name" in item and item["name"] is None:
            keep["name"] = None  # written back as it was read
        return Message(role=role, content=text, tool_call_id=item.get("tool_call_id"), name=item.get("name"), extra={"adp": keep})
    if kind in ("image_observation", "web_observation"):
        text = (item.get("axtree") or item.get("html") or "") if kind == "web_observation" else ""
        role = "tool" if item.get("tool_call_id") else "user"
        keep = {k: v for k, v in item.items() if k != "tool_call_id"}
        return Message(role=role, content=str(text), tool_call_id=item.get("tool_call_id"), extra={"adp": keep})
    if kind == "message_action":
        text = item.get("content")
        if not isinstance(text, str):
            raise InputError(f"content item {i} (message_action) has no 'content' text", origin.path, origin.line)
        keep["description"] = item.get("description")
        return Message(role="assistant", content=text, extra={"adp": keep})
    if kind in ("api_action", "code_action"):
        if kind == "api_action":
            if not isinstance(item.get("function"), str) or not isinstance(item.get("kwargs", {}), dict):
                raise InputError(f"content item {i} (api_action) needs a 'function' name and 'kwargs' object", origin.path, origin.line)
            name, arguments = item["function"], json.dumps(item.get("kwargs", {}), ensure_ascii=False)
        else:
            if not isinstance(item.get("language"), str) or not isinstance(item.get("content"), str):
                raise InputError(f"content item {i} (code_action) needs 'language' and 'content' text", origin.path, origin.line)
            name, arguments = item["language"], item["content"]
        call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if item.get("tool_call_id") is not None:
            call["id"] = item["tool_call_id"]
        if item.get("description") is None:
            keep["description"] = None
        return Message(role="assistant", content=item.get("description") or "", tool_calls=[call], extra={"adp": keep})
    raise InputError(f"content item {i} has unknown class_ {kind!r} (expected one of {', '.join(ACTIONS + OBSERVATIONS)})",
                     origin.path, origin.line)


def render(trajectory: Trajectory, flags: list[bool] | None) -> dict[str, Any]:
    """The ADP record of `trajectory` (flags are not written: ADP has no per-item training flag;
    the selection goes into `details`, see `place_selection`)."""
    content = [_render_message(m, i) for i, m in enumerate(trajectory.messages)]
    metadata = dict(trajectory.metadata)
    record: dict[str, Any] = {"schema_version": metadata.pop("schema_version", SCHEMA_VERSION), "id": trajectory.id, "content": content}
    for key in _TOP_LEVEL[1:]:
        if key in metadata:
            record[key] = metadata.pop(key)
    record["details"] = metadata
    return record


def place_selection(record: dict[str, Any], selection: dict[str, Any]) -> None:
    """Selections go into `details`: the schema forbids any other extra key."""
    record["details"].update(selection)


def _render_message(m: Message, i: int) -> dict[str, Any]:
    keep = dict(m.extra.get("adp") or {})
    kind = keep.pop("class_", None)
    if m.role == "assistant":
        if m.tool_calls:
            if len(m.tool_calls) != 1:
                raise ConfigError(f"message {i} has {len(m.tool_calls)} tool calls; an ADP action holds one")
            fn = m.tool_calls[0].get("function", m.tool_calls[0])
            description = keep.pop("description", m.content) if not m.content else m.content
            item: dict[str, Any] = {"class_": kind or "api_action"}
            if "id" in m.tool_calls[0]:
                item["tool_call_id"] = m.tool_calls[0]["id"]
            if item["class_"] == "code_action":
                item.update(language=fn.get("name"), content=fn.get("arguments", ""))
            else:
                item["class_"] = "api_action"
                item.update(function=fn.get("name"), kwargs=_kwargs(fn.get("arguments")))
            item["description"] = description
            return {**item, **keep}
        if kind == "text_observation":  # a thought without an action, as it was read
            return _observation(m, keep, "text_observation")
        return {"class_": "message_action", "content": m.content, "description": keep.pop("description", None), **keep}
    if kind in ("image_observation", "web_observation"):
        item = {"class_": kind, **keep}
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        return item
    if "source" not in keep:
        keep["source"] = {"user": "user", "system": "user", "tool": "environment"}.get(m.role, "user")
    return _observation(m, keep, "text_observation")


def _observation(m: Message, keep: dict[str, Any], kind: str) -> dict[str, Any]:
    item: dict[str, Any] = {"class_": kind, "content": m.content}
    if m.tool_call_id is not None:
        item["tool_call_id"] = m.tool_call_id
    if m.name is not None or "name" in keep:
        item["name"] = m.name
    keep.pop("name", None)
    return {**item, **keep}


def _kwargs(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
