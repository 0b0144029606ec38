"""Progress features: what a step does to the task state, in terms that mean the same in every env.

The structural group describes a step (where it is, how long, which action); this group describes
its effect, read from the trajectory as a whole the way a teacher reads it with hindsight:

- progress: the share of the trajectory's total score gain this step makes, and whether the
  environment's outcome reads like a change of state ("you pick up", "is now", "cancelled")
  rather than a look;
- task objects: task words the step touches, or its outcome reveals, for the first time;
- hindsight: how much of the final step (the answer, the last action) this step's outcome already
  holds, and whether the objects the step acts on are acted on again later;
- kind of action: information-seeking or navigation verbs against the rest, the first use of a
  verb or tool, runs of the same action (numbers ignored), recovery after a failure, planning
  language, a new number in the outcome (a measurement or an id);
- trajectory shape: length, whether a score is reported, the share of tool calls, the diversity
  of actions (every step of a trajectory shares them; they let a model set how many steps a
  trajectory of this kind needs).

No word list names an environment's objects; the verb lists are generic English for looking,
moving and changing things. Pure Python, no model: as cheap as the structural group.
"""

from __future__ import annotations

import math
import re

import numpy as np

from critstep.distill.features.structural import FAILURE, SCORE, STOPWORDS, WORD, action_text
from critstep.trajectory import Step, Trajectory

# Verbs that look, move or ask without changing the task state (also as tool-name prefixes:
# get_user_details, search_flights, list_all_airports).
LOOK_VERBS = frozenset(
    ["look", "examine", "check", "search", "get", "find", "list", "read", "inventory", "go", "goto", "move_to", "navigate", "open_page", "lookup", "retrieve", "think", "view", "show", "query", "browse", "scroll", "click_search", "describe", "inspect", "fetch", "wait", "teleport"]
)
STATE_CHANGE = re.compile(
    r"\b(you (pick|put|take|move|pour|place|open|close|turn|heat|cool|clean|slice|mix|focus|connect|plant)\w*|"
    r"is now|are now|now (on|off|open|closed|activated|deactivated)|successfully|cancel+ed|booked|updated|"
    r"confirmed|changed|modified|transferred|refund\w*|purchased|added|removed|created|deleted|completed?)\b",
    re.IGNORECASE,
)
PLAN = re.compile(r"\b(first|then|next|finally|after that|plan|steps?|need to|i will|i'll|i should|in order to|goal)\b", re.IGNORECASE)
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
DIGITS = re.compile(r"\d+")

NAMES = [
    "score_gain_share",
    "score_gain_rank",
    "has_score",
    "state_change_after",
    "look_action",
    "first_use_of_verb",
    "verb_share",
    "same_as_previous",
    "run_start",
    "run_length_log",
    "recovers_from_failure",
    "task_words_first_touched",
    "task_words_first_seen_after",
    "final_overlap_after_new",
    "final_overlap_step",
    "objects_used_later",
    "objects_used_before",
    "plan_markers",
    "new_number_after",
    "is_tool_call",
    "traj_len_log",
    "traj_tool_share",
    "traj_verb_diversity",
    "traj_repeat_share",
]


def verb(step: Step) -> str:
    """The action's verb: a tool's name prefix (search_flights -> search), else the first word of
    the step's last line, without "Action:"-style markers."""
    calls = step.message.tool_calls
    if calls:
        fn = calls[0].get("function", calls[0])
        return str(fn.get("name", "tool")).lower().split("_")[0]
    words = WORD.findall(re.sub(r"^(action|act)\s*(\d+)?\s*:\s*", "", action_text(step)))
    return words[0] if words else ""


TASK_STATEMENT = re.compile(r"your task is(?: to)?:?", re.IGNORECASE)


def task_statement(text: str) -> str:
    """The task itself: what follows "Your task is to" when the first message also describes the
    scene (ALFWorld, ScienceWorld, AgentInstruct), else the whole first message."""
    found = TASK_STATEMENT.search(text)
    return text[found.end() :] if found else text


def _content(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOPWORDS and not w.isdigit() and len(w) > 1}


def progress_features(trajectory: Trajectory) -> np.ndarray:
    """One row of `NAMES` per step of `trajectory` (shape n_steps x len(NAMES))."""
    steps = trajectory.steps()
    n = len(steps)
    rows = np.zeros((n, len(NAMES)), dtype=np.float32)
    if n == 0:
        return rows
    task = _content(task_statement(trajectory.task))
    actions = [action_text(s) for s in steps]
    normalized = [DIGITS.sub("#", a) for a in actions]
    objects = [_content(a) for a in actions]
    verbs = [verb(s) for s in steps]
    final = _content(steps[-1].text) - task

    # score gains: each step's share of the total gain, and its rank among the gains
    gains = np.zeros(n)
    score = 0.0
    has_score = False
    for k, s in enumerate(steps):
        found = SCORE.findall(s.observation_after or "")
        if found:
            has_score = True
            new = float(found[-1])
            gains[k] = new - score
            score = new
    positive = np.clip(gains, 0.0, None)
    total = positive.sum()
    order = np.argsort(-positive, kind="stable")
    rank = np.zeros(n)
    rank[order] = np.arange(n)
    n_up = int((positive > 0).sum())

    runs = np.ones(n)
    for k in range(1, n):
        if normalized[k] == normalized[k - 1]:
            runs[k] = runs[k - 1] + 1
    run_length = runs.copy()
    for k in range(n - 2, -1, -1):
        if normalized[k + 1] == normalized[k]:
            run_length[k] = run_length[k + 1]

    tool_share = sum(bool(s.message.tool_calls) for s in steps) / n
    diversity = len(set(normalized)) / n
    repeat_share = sum(normalized[k] == normalized[k - 1] for k in range(1, n)) / n
    verb_count = {v: verbs.count(v) for v in set(verbs)}

    touched: set[str] = set()
    seen_obs: set[str] = set()  # words of the observations so far (not of the task message)
    seen_numbers: set[str] = set(NUMBER.findall(trajectory.task))
    seen_verbs: set[str] = set()
    for k, s in enumerate(steps):
        before, after = s.observation_before or "", s.observation_after or ""
        seen_numbers |= set(NUMBER.findall(before))
        after_words = _content(after)
        after_numbers = set(NUMBER.findall(SCORE.sub("", after)))
        later = set().union(*objects[k + 1 :]) if k + 1 < n else set()
        earlier = set().union(*objects[:k]) if k else set()
        obj = objects[k]
        first_touch = (obj & task) - touched
        rows[k] = [
            positive[k] / total if total > 0 else 0.0,
            (1.0 - rank[k] / max(1, n_up)) if positive[k] > 0 else 0.0,
            float(has_score),
            float(bool(STATE_CHANGE.search(after))),
            float(verbs[k] in LOOK_VERBS),
            float(verbs[k] not in seen_verbs),
            verb_count[verbs[k]] / n,
            float(k > 0 and normalized[k] == normalized[k - 1]),
            float(runs[k] == 1 and run_length[k] > 1),
            math.log(run_length[k]),
            float(bool(FAILURE.search(before)) and not FAILURE.search(after)) if k > 0 else 0.0,
            float(len(first_touch)),
            float(len((after_words & task) - seen_obs)),
            len((after_words - seen_obs) & final) / max(1, len(final)),
            len(_content(s.text) & final) / max(1, len(final)) if k < n - 1 else 1.0,
            len(obj & later) / max(1, len(obj)),
            len(obj & earlier) / max(1, len(obj)),
            min(len(PLAN.findall(s.text)), 10) / 10,
            float(bool(after_numbers - seen_numbers)),
            float(bool(s.message.tool_calls)),
            math.log1p(n),
            tool_share,
            diversity,
            repeat_share,
        ]
        touched |= first_touch
        seen_obs |= after_words
        seen_numbers |= after_numbers
        seen_verbs.add(verbs[k])
    return rows
