"""The answer's JSON schema, and the checks every answer passes whatever the model or prompt said.

Structured Outputs make well-formed JSON likely, not guaranteed (and many local servers ignore
`response_format`), so nothing the model returns is trusted: it is parsed leniently, then
validated strictly against the trajectory it is about.
"""

from __future__ import annotations

import json
import re
from typing import Any

from critstep.labels import CriticalStep
from critstep.selection import CATEGORIES

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "plan": {"type": "string"},
        "critical": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer"},
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                    "reason": {"type": "string"},
                },
                "required": ["step", "category", "reason"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["plan", "critical"],
    "additionalProperties": False,
}

# `response_format` per mode, strongest first; the client falls back along this order.
RESPONSE_FORMATS: dict[str, dict[str, Any] | None] = {
    "json_schema": {"type": "json_schema", "json_schema": {"name": "critical_steps", "strict": True, "schema": ANSWER_SCHEMA}},
    "json_object": {"type": "json_object"},
    "text": None,
}

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class AnswerError(ValueError):
    """An answer that breaks the rules; the message says how, for the repair request and the record."""


def parse_answer(text: str | None) -> Any:
    """The JSON value in `text`: the whole text, a fenced block, or the outermost {...} span."""
    if not text or not text.strip():
        raise AnswerError("the answer is empty")
    candidates = [text, *_FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise AnswerError("the answer contains no valid JSON object")


def validate_answer(value: Any, n_steps: int, cap: int) -> tuple[str, list[CriticalStep]]:
    """The plan and critical steps of a parsed answer, or an `AnswerError` naming the first problem."""
    if not isinstance(value, dict):
        raise AnswerError(f"the answer is a JSON {type(value).__name__}, not an object")
    critical = value.get("critical")
    if not isinstance(critical, list):
        raise AnswerError("'critical' is missing or not a list")
    plan = value.get("plan", "")
    if not isinstance(plan, str):
        raise AnswerError("'plan' is not a string")
    if len(critical) > cap:
        raise AnswerError(f"{len(critical)} critical steps chosen but at most {cap} of {n_steps} are allowed")
    out: list[CriticalStep] = []
    seen: set[int] = set()
    for entry in critical:
        if not isinstance(entry, dict):
            raise AnswerError(f"critical entry {entry!r} is not an object")
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise AnswerError(f"step {step!r} is not an integer")
        if not 0 <= step < n_steps:
            raise AnswerError(f"step {step} is out of range (indices 0 to {n_steps - 1})")
        if step in seen:
            raise AnswerError(f"step {step} is listed twice")
        category = entry.get("category")
        if category not in CATEGORIES:
            raise AnswerError(f"step {step} has unknown category {category!r}")
        seen.add(step)
        out.append(CriticalStep(step, category, str(entry.get("reason") or "")))
    return plan, sorted(out, key=lambda c: c.step)
