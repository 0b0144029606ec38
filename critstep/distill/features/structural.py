"""Structural step features: where a step sits, how long it is, what it does, and what it changed.

These are cheap (pure Python, no model) and carry much of the teacher's signal: ATLaS-style
labelers favour the step that creates the plan, the step that acts on an object the task names
(first touch of a task word weighs most), and the step after which the environment reports
progress or a failure to recover from.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

from critstep.trajectory import Step, Trajectory

ACTION_BINS = 32  # hashed action/tool names: a fixed width, so no vocabulary has to be fitted
FAILURE = re.compile(
    r"nothing happens|\berror\b|\bfail|invalid|not found|cannot|can't|unable|no such|not possible|"
    r"doesn't|does not|isn't available|not available|unknown|incorrect|wrong|sorry",
    re.IGNORECASE,
)
# Running scores and rewards that environments print (ScienceWorld "(score: 0.35)", "reward = 1").
SCORE = re.compile(r"(?:score|reward)\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(["a", "an", "the", "to", "of", "in", "on", "at", "for", "from", "with", "and", "or", "is", "are", "be", "it", "you", "your", "i", "me", "my", "this", "that", "then"])

NAMES = [
    "pos_rel",
    "pos_abs_log",
    "steps_left_log",
    "n_steps_log",
    "is_first",
    "is_last",
    "step_chars_log",
    "obs_before_chars_log",
    "obs_after_chars_log",
    "n_tool_calls",
    "fail_before",
    "fail_after",
    "score_delta",
    "score_up",
    "reward_after",
    "repeat_action",
    "action_seen_before",
    "step_word_novelty",
    "obs_after_word_novelty",
    "obs_after_seen_before",
    "action_count_share",
    "action_task_overlap",
    "action_task_overlap_new",
    "obs_after_task_overlap",
] + [f"action_hash_{i}" for i in range(ACTION_BINS)]


def action_name(step: Step) -> str:
    """The tool name of a tool call, else the first word of the step's last line (its action)."""
    calls = step.message.tool_calls
    if calls:
        fn = calls[0].get("function", calls[0])
        return str(fn.get("name", "tool"))
    lines = [ln.strip() for ln in step.message.content.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    last = re.sub(r"^(action|act)\s*(\d+)?\s*:\s*", "", lines[-1], flags=re.IGNORECASE)
    words = WORD.findall(last.lower())
    return words[0] if words else ""


def action_text(step: Step) -> str:
    lines = [ln.strip() for ln in step.text.strip().splitlines() if ln.strip()]
    return lines[-1].lower() if lines else ""


def _log_len(text: str | None) -> float:
    return math.log1p(len(text or ""))


def _last_score(text: str | None) -> float | None:
    found = SCORE.findall(text or "")
    return float(found[-1]) if found else None


def structural_features(trajectory: Trajectory) -> np.ndarray:
    """One row of `NAMES` per step of `trajectory` (shape n_steps x len(NAMES))."""
    steps = trajectory.steps()
    n = len(steps)
    rows = np.zeros((n, len(NAMES)), dtype=np.float32)
    task_words = set(WORD.findall(trajectory.task.lower())) - STOPWORDS
    seen_words: set[str] = set(task_words)
    used_task_words: set[str] = set()
    seen_actions: set[str] = set()
    seen_obs: set[str] = set()
    names = [action_name(s) for s in steps]
    counts = {a: names.count(a) for a in set(names)}
    score = 0.0
    previous_action = None
    for k, s in enumerate(steps):
        before, after = s.observation_before, s.observation_after
        seen_words |= set(WORD.findall((before or "").lower()))
        step_words = set(WORD.findall(s.text.lower()))
        after_words = set(WORD.findall((after or "").lower()))
        new_score = _last_score(after)
        delta = 0.0 if new_score is None else new_score - score
        act = action_text(s)
        act_task = (set(WORD.findall(act)) - STOPWORDS) & task_words
        row = [
            k / (n - 1) if n > 1 else 0.0,
            math.log1p(k),
            math.log1p(n - 1 - k),
            math.log1p(n),
            float(k == 0),
            float(k == n - 1),
            _log_len(s.text),
            _log_len(before),
            _log_len(after),
            float(len(s.message.tool_calls or [])),
            float(bool(before and FAILURE.search(before))),
            float(bool(after and FAILURE.search(after))),
            delta,
            float(delta > 0),
            new_score if new_score is not None else 0.0,
            float(act == previous_action),
            float(act in seen_actions),
            len(step_words - seen_words) / max(1, len(step_words)),
            len(after_words - seen_words) / max(1, len(after_words)),
            float((after or "").strip() in seen_obs),
            counts[names[k]] / n,
            len(act_task) / max(1, len(set(WORD.findall(act)) - STOPWORDS)),
            float(len(act_task - used_task_words)),
            len((after_words - STOPWORDS) & task_words) / max(1, len(task_words)),
        ]
        rows[k, : len(row)] = row
        rows[k, len(row) + zlib.crc32(names[k].encode()) % ACTION_BINS] = 1.0
        if new_score is not None:
            score = new_score
        previous_action = act
        used_task_words |= act_task
        seen_actions.add(act)
        seen_obs.add((after or "").strip())
        seen_words |= step_words | after_words
    return rows
