"""Render a trajectory with a chat template and find each step's exact token span.

The span of an assistant turn is what the model must generate: its content, its tool calls as the
template writes them, and the end-of-turn token. It is found on characters, then mapped to tokens:

1. For step message i, the template renders `messages[:i]` with the generation prompt and
   `messages[:i+1]` without it; the text the second adds to the first is the turn.
2. Where the full rendering starts with `messages[:i+1]`'s rendering (ChatML, Llama 3) the turn's
   offset is known exactly. Templates that rewrite earlier text as the chat grows (Mistral moves the
   system prompt to the last user turn) need the turn found in the full text: of its occurrences
   after the previous turn, the one that holds the first character where the full rendering changes
   when message i alone is changed. An observation that happens to contain the turn's text is never
   taken for it; a turn that cannot be pinned down this way is an error, not a guess.
3. The full text is tokenized once with offsets; a token belongs to the span if it overlaps it, so
   every character of the turn is supervised however the tokenizer merges across the boundary.
   Slow (Python) tokenizers give no offsets: the span boundaries are then found by tokenizing the
   text up to each boundary, which must give a prefix of the full tokenization (else an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critstep.errors import ConfigError, InputError
from critstep.trajectory import Message, Trajectory


@dataclass
class RenderedTrajectory:
    """Token ids of a whole trajectory, the token span of every step, and which steps are selected."""

    id: str
    input_ids: list[int]
    spans: list[tuple[int, int]]  # per step (0-based over assistant steps): [start, end) in tokens
    selected: list[int]
    prompt_end: int  # tokens before the first step: the system prompt and the task

    def labels(self, steps: Sequence[int] | None = None) -> list[int]:
        """-100 everywhere except the tokens of `steps` (default: the selected ones)."""
        out = [-100] * len(self.input_ids)
        for k in self.selected if steps is None else steps:
            start, end = self.spans[k]
            out[start:end] = self.input_ids[start:end]
        return out


def load_chat_template(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such chat template file") from None


def template_source(tokenizer: Any, chat_template: str | None) -> str:
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError("the tokenizer has no chat template: pass one with --chat-template FILE")
    if isinstance(template, dict):  # tokenizers with several named templates
        template = template.get("default") or next(iter(template.values()))
    return str(template)


def message_dicts(trajectory: Trajectory, template: str) -> list[dict[str, Any]]:
    """OpenAI-style dicts for the template. Tool calls go into the content where it ignores them."""
    renders_tool_calls = "tool_calls" in template
    return [_as_dict(m, renders_tool_calls) for m in trajectory.messages]


def _as_dict(m: Message, renders_tool_calls: bool) -> dict[str, Any]:
    if m.tool_calls and renders_tool_calls:
        d: dict[str, Any] = {"role": m.role, "content": m.content, "tool_calls": _normalise_calls(m.tool_calls)}
    else:
        d = {"role": m.role, "content": m.text()}
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    return d


def _normalise_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Templates differ on whether arguments are a string or a mapping; give them the OpenAI form."""
    out = []
    for c in calls:
        fn = dict(c.get("function", c))
        out.append({"type": "function", "id": c.get("id"), "function": fn})
    return out


def render_trajectory(
    trajectory: Trajectory,
    selected: Sequence[int],
    tokenizer: Any,
    chat_template: str | None = None,
) -> RenderedTrajectory:
    """Token ids and per-step token spans of `trajectory` under the (given or tokenizer's) template."""
    template = template_source(tokenizer, chat_template)
    messages = message_dicts(trajectory, template)
    where = trajectory.origin.path if trajectory.origin else None
    line = trajectory.origin.line if trajectory.origin else None

    def render(msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # jinja raises its own errors (e.g. role alternation checks)
            raise InputError(f"trajectory {trajectory.id!r}: the chat template failed: {e}", where, line) from None

    full = render(messages, False)
    char_spans: list[tuple[int, int]] = []
    cursor = 0
    for i in trajectory.step_message_indices:
        before = render(messages[:i], True) if i else ""
        upto = render(messages[: i + 1], False)
        if not upto.startswith(before):
            raise InputError(
                f"trajectory {trajectory.id!r}: the chat template renders messages before step message {i} differently "
                "with and without the step, so the step's tokens cannot be told apart",
                where,
                line,
            )
        common = len(before)
        turn = upto[common:].rstrip()
        if not turn.strip():
            raise InputError(f"trajectory {trajectory.id!r}: message {i} renders as nothing under the chat template", where, line)
        if full.startswith(upto[: common + len(turn)]) and common >= cursor:
            start = common
        else:
            changed = _first_difference(full, render(_with_changed_message(messages, i), False))
            found = [s for s in _occurrences(full, turn, cursor) if s <= changed < s + len(turn)]
            if len(found) != 1:
                raise InputError(
                    f"trajectory {trajectory.id!r}: the chat template renders message {i} differently in the whole "
                    "conversation than on its own, so its tokens cannot be located; pass --chat-template with a "
                    "template that renders each turn the same way",
                    where,
                    line,
                )
            start = found[0]
        char_spans.append((start, start + len(turn)))
        cursor = start + len(turn)

    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoding["input_ids"])
    if "offset_mapping" in encoding:
        offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
        spans = [_token_span(offsets, s, e) for s, e in char_spans]
    else:  # a slow (Python) tokenizer: no offsets
        spans = [_token_span_by_prefix(tokenizer, full, ids, s, e, trajectory.id, where, line) for s, e in char_spans]
    prompt_end = spans[0][0] if spans else len(ids)
    return RenderedTrajectory(trajectory.id, ids, spans, sorted(selected), prompt_end)


_MARK = "\u2063critstep\u2063"  # invisible separator: survives `trim`, unlikely in any template logic


def _with_changed_message(messages: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """`messages` with message i's text (content, or its tool calls' names) changed, everything else equal."""
    changed = dict(messages[i])
    if changed.get("content"):
        changed["content"] = _MARK + str(changed["content"])  # at the start: a turn's end may be stripped
    elif changed.get("tool_calls"):
        changed["tool_calls"] = [{**c, "function": {**c["function"], "name": _MARK + str(c["function"].get("name"))}}
                                 for c in changed["tool_calls"]]
    else:
        changed["content"] = _MARK
    return [*messages[:i], changed, *messages[i + 1 :]]


def _first_difference(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _occurrences(text: str, part: str, start: int) -> list[int]:
    found = []
    k = text.find(part, start)
    while k >= 0:
        found.append(k)
        k = text.find(part, k + 1)
    return found


def _token_span_by_prefix(tokenizer: Any, text: str, ids: list[int], start: int, end: int, trajectory_id: str,
                          where: Any, line: int | None) -> tuple[int, int]:
    """The tokens of characters [start, end) for a tokenizer without offsets: tokenize up to each boundary."""
    bounds = []
    for boundary in (start, end):
        prefix = list(tokenizer(text[:boundary], add_special_tokens=False)["input_ids"])
        if ids[: len(prefix)] != prefix:
            raise InputError(
                f"trajectory {trajectory_id!r}: this slow (Python) tokenizer gives no character offsets and merges "
                "tokens across a step's boundary, so the step's tokens cannot be located; use a fast tokenizer "
                "(a model directory with tokenizer.json, or `pip install tokenizers sentencepiece` so transformers "
                "can convert it)",
                where,
                line,
            )
        bounds.append(len(prefix))
    return bounds[0], bounds[1]


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The tokens overlapping characters [start, end)."""
    first = next((t for t, (s, e) in enumerate(offsets) if e > start and e > s), len(offsets))
    last = first
    while last < len(offsets) and offsets[last][0] < end:
        last += 1
    return first, last
