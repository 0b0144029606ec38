"""What an agent turn *does*, per environment, so a generated turn can be scored against the gold one.

An agent turn mixes reasoning and an action; only the action reaches the environment. Each env
has its own action syntax, so the extraction is env-aware:

- `alfworld`, `sciworld`: the last line that is neither a thought (`think:`, `Thought:`) nor a
  plan marker (KnowAgent's `ActionPath:`), with `> ` / `Action:` prefixes removed;
- `qa-search` (ReAct QA): the last `Search[...]`, `Lookup[...]` or `Finish[...]` (any case);
- `tau-airline`: the tool call (name + arguments), from `tool_calls` or from a tool call written in
  the text (critstep's rendering `name({...})`, Hermes/Qwen `<tool_call>{...}</tool_call>`, a
  Llama-3.1 JSON object); a turn without one is `respond` with its text, as tau-bench models it;
- any other env: the last non-empty line.

In every env a tool call, structured or written in the text, is compared as a tool call.

A turn with no action at all (a ReAct thought) is the action `think`: in these environments a
thought changes nothing, so what counts is the decision to think rather than act.

Two matches are scored. **Exact**: the action as written is identical (tool-call arguments
compared as JSON values, so key order and spacing do not count). **Normalized**: identical after
an env-aware normalization: case, whitespace, articles and trailing punctuation (commands), ALFWorld's
`in`/`on`/`in/on` after `put`, SQuAD-style answer normalization inside `Search[...]`/`Finish[...]`,
and case/whitespace inside tool-call string arguments and number formatting.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK = "think"
RESPOND = "respond"

_THOUGHT_LINE = re.compile(r"^(think|thought)\s*\d*\s*:", re.IGNORECASE)
_PLAN_LINE = re.compile(r"^actionpath\s*:", re.IGNORECASE)
_ACTION_PREFIX = re.compile(r"^(?:>\s*|(?:action|act)\s*\d*\s*:\s*)+", re.IGNORECASE)
_REACT_ACTION = re.compile(r"\b(search|lookup|finish)\s*\[(.*)\]", re.IGNORECASE)
_TEXT_CALL = re.compile(r"^([A-Za-z_][\w.\-]*)\((.*)\)$", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][\w\-]*")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUT = re.compile(r"^put (.+?) (?:in/on|in|on|into|onto) (.+)$")


@dataclass(frozen=True)
class Action:
    """One turn's action: its `name` (command verb, tool, `search`, `think`, `respond`), the
    action as written (`text`, compared for exact match) and its `normalized` form."""

    name: str
    text: str
    normalized: str


def parse_action(env: str, content: str | None, tool_calls: Sequence[dict[str, Any]] | None = None) -> Action:
    """The action of one agent turn in `env` (its text and, if any, its structured tool calls)."""
    content = content or ""
    calls = [_call_parts(c) for c in tool_calls] if tool_calls else _calls_in_text(content)
    if calls:  # in any env: a tool call is compared as one, however it was written
        return _tool_call_action(calls)
    if env in ("alfworld", "sciworld"):
        return _command_action(content, alfworld=env == "alfworld")
    if env == "qa-search":
        return _react_qa_action(content)
    if env == "tau-airline":
        text = content.strip()
        return Action(RESPOND, text, f"{RESPOND}({_normalize_words(text)})")
    return _last_line_action(content)


def _lines(content: str) -> list[str]:
    return [line.strip() for line in content.splitlines() if line.strip()]


def _command_action(content: str, alfworld: bool) -> Action:
    """ALFWorld / ScienceWorld: one command line, after any thought lines."""
    for line in reversed(_lines(content)):
        if _THOUGHT_LINE.match(line) or _PLAN_LINE.match(line):
            continue
        command = _ACTION_PREFIX.sub("", line).strip()
        if command:
            return Action(command.split()[0].lower(), command, _normalize_command(command, alfworld))
    return Action(THINK, THINK, THINK)


def _normalize_command(command: str, alfworld: bool) -> str:
    text = command.lower().rstrip(".!")
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    if alfworld:
        put = _PUT.match(text)
        if put:  # ALFWorld writes "put X in/on Y"; agents write "in" or "on"
            text = f"put {put.group(1)} in/on {put.group(2)}"
    return text


def _react_qa_action(content: str) -> Action:
    """ReAct QA: the last Search[...], Lookup[...] or Finish[...] of the turn."""
    for line in reversed(_lines(content)):
        found = list(_REACT_ACTION.finditer(line))
        if found:
            verb, argument = found[-1].group(1), found[-1].group(2)
            return Action(verb.lower(), f"{verb}[{argument}]", f"{verb.lower()}[{normalize_answer(argument)}]")
    return Action(THINK, THINK, THINK)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _last_line_action(content: str) -> Action:
    lines = [line for line in _lines(content) if not line.startswith("```")]  # a code block's fence is not its action
    if not lines:
        return Action(THINK, THINK, THINK)
    line = _ACTION_PREFIX.sub("", lines[-1]).strip() or lines[-1]
    name = _NAME.match(line)
    return Action(name.group(0).lower() if name else line.split()[0].lower(), line, _normalize_words(line))


def _normalize_words(text: str) -> str:
    return " ".join(text.lower().rstrip(".!").split())


# --- tool calls ---------------------------------------------------------------------------------

def _call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    """(name, arguments as a value) of an OpenAI-style tool call; unparsable arguments stay text."""
    fn = call.get("function", call)
    return str(fn.get("name", "")), _json_value(fn.get("arguments", fn.get("parameters", {})))


def _json_value(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return arguments.strip()
    return arguments


def _calls_in_text(content: str) -> list[tuple[str, Any]]:
    """Tool calls written as text by a model without structured tool calling.

    Three spellings: critstep's rendering of a tool call for templates that ignore `tool_calls`
    (`name({"arg": ...})`, one per line), and JSON objects with a name and arguments or
    parameters (Hermes/Qwen `<tool_call>` blocks, Llama 3.1's JSON tool calls).
    """
    calls = [(m.group(1), _json_value(m.group(2))) for line in _lines(content) if (m := _TEXT_CALL.match(line))]
    calls = [(name, args) for name, args in calls if isinstance(args, dict)]
    if calls:
        return calls
    decoder = json.JSONDecoder()
    found: list[tuple[str, Any]] = []
    pos = content.find("{")
    while pos >= 0:
        try:
            value, end = decoder.raw_decode(content, pos)
        except json.JSONDecodeError:
            pos = content.find("{", pos + 1)
            continue
        if isinstance(value, dict) and isinstance(value.get("name"), str) and ("arguments" in value or "parameters" in value):
            found.append((value["name"], _json_value(value.get("arguments", value.get("parameters")))))
        pos = content.find("{", end)
    return found


def _tool_call_action(calls: list[tuple[str, Any]]) -> Action:
    text = "; ".join(f"{name}({_canonical(args)})" for name, args in calls)
    normalized = "; ".join(f"{name.lower()}({_canonical(_normalize_value(args))})" for name, args in calls)
    return Action(calls[0][0], text, normalized)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _normalize_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _normalize_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_value(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = " ".join(str(value).lower().split())
    try:  # "350" and 350 are the same amount
        return float(text)
    except ValueError:
        return text


def actions_match(gold: Action, predicted: Action) -> tuple[bool, bool]:
    """(exact, normalized) match of a predicted action against the gold one."""
    return gold.text == predicted.text, gold.normalized == predicted.normalized
