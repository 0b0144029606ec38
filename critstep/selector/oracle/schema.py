"""The answer's JSON schema, per request, and the checks every answer passes whatever the model said.

The schema is built for each trajectory: `step` is an enum of its valid indices, the list holds at
most the cap (`maxItems`), and (where the server understands them) `plan` and `reason` have length
limits, so a grammar-constrained server cannot run away into a string cut at `max_tokens`.
OpenAI's strict Structured Outputs accept only a subset of JSON Schema: `enum` and `minItems`/
`maxItems` yes, `minLength`/`maxLength` no, and fine-tuned models none of the size keywords; the
`openai` dialects send only those.

Structured outputs make well-formed JSON likely, not guaranteed (and some servers ignore
`response_format`), so nothing the model returns is trusted: it is parsed leniently, then validated
strictly against the trajectory it is about.
"""

from __future__ import annotations

import json
import re
from typing import Any

from critstep.labels import CriticalStep
from critstep.selection import CATEGORIES

# Longest plan and reason a local server may generate (characters): above the longest of the
# 306 seed labels (plan 242, reason 114; means 115 and 66).
PLAN_MAX_CHARS = 300
REASON_MAX_CHARS = 150

# `response_format` modes, strongest first; `auto` starts at the first and falls back along this order.
MODES = ("json_schema", "json_object", "text")
DIALECTS = ("full", "openai", "openai-ft")

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
# A plan that is a template slot rather than a plan: "<the sub-goals>", "[plan]", "{...}", "...".
_SLOT = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\}|[.\u2026\s]*")
_PLACEHOLDER_PLANS = {"the sub-goals", "sub-goals", "subgoals", "plan", "the plan", "string", "text", "todo", "n/a", "none", "null"}


class AnswerError(ValueError):
    """An answer that breaks the rules; the message says how, for the repair request and the record."""


def answer_schema(n_steps: int, cap: int, dialect: str = "full") -> dict[str, Any]:
    """The JSON schema of a valid answer about a trajectory of `n_steps` steps with `cap` choices at most."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown schema dialect {dialect!r}")
    plan: dict[str, Any] = {"type": "string"}
    reason: dict[str, Any] = {"type": "string"}
    if dialect == "full":
        plan |= {"minLength": 1, "maxLength": PLAN_MAX_CHARS}
        reason |= {"maxLength": REASON_MAX_CHARS}
    item = {
        "type": "object",
        "properties": {
            "step": {"type": "integer", "enum": list(range(n_steps))},
            "category": {"type": "string", "enum": list(CATEGORIES)},
            "reason": reason,
        },
        "required": ["step", "category", "reason"],
        "additionalProperties": False,
    }
    critical: dict[str, Any] = {"type": "array", "items": item}
    if dialect != "openai-ft":
        critical["maxItems"] = cap
    return {
        "type": "object",
        "properties": {"plan": plan, "critical": critical},
        "required": ["plan", "critical"],
        "additionalProperties": False,
    }


def response_format(mode: str, schema: dict[str, Any], dialect: str = "full") -> dict[str, Any] | None:
    """The `response_format` of a request in `mode`, in the form the server understands.

    JSON mode carries the schema too (`{"type": "json_object", "schema": ...}`), which llama.cpp's
    servers enforce; OpenAI gets plain JSON mode (it rejects unknown fields).
    """
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "critical_steps", "strict": True, "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object"} if dialect.startswith("openai") else {"type": "json_object", "schema": schema}
    if mode == "text":
        return None
    raise ValueError(f"unknown response format {mode!r} (known: {', '.join(MODES)})")


def is_strict_json(text: str | None) -> bool:
    """True when the whole answer is one JSON object: what a server enforcing a JSON format returns."""
    try:
        return isinstance(json.loads(text or ""), dict)
    except ValueError:
        return False


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


def check_plan(plan: Any) -> str:
    """The plan, stripped; empty plans and template slots copied from a prompt are refused."""
    if not isinstance(plan, str):
        raise AnswerError("'plan' is not a string")
    text = plan.strip()
    if not text:
        raise AnswerError("'plan' is empty: write the sub-goals of the task")
    if _SLOT.fullmatch(text) or text.lower().strip(" .:") in _PLACEHOLDER_PLANS or not re.search(r"[^\W\d_]", text):
        raise AnswerError(f"'plan' is a placeholder ({text[:40]!r}), not the sub-goals of this task")
    return text


def validate_answer(value: Any, n_steps: int, cap: int) -> tuple[str, list[CriticalStep]]:
    """The plan and critical steps of a parsed answer, or an `AnswerError` naming the first problem."""
    if not isinstance(value, dict):
        raise AnswerError(f"the answer is a JSON {type(value).__name__}, not an object")
    critical = value.get("critical")
    if not isinstance(critical, list):
        raise AnswerError("'critical' is missing or not a list")
    plan = check_plan(value.get("plan", ""))
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
