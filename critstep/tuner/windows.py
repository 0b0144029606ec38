"""Cut rendered trajectories into training windows of at most `max_seq_len` tokens.

Every selected step is trained exactly once, with as much preceding context as fits:
- a trajectory is cut after its last selected step (later tokens carry no loss);
- if what remains fits, it is one window with the whole context;
- otherwise windows end at a selected step's end and reach back as far as the length allows,
  each supervising the run of consecutive selected steps that fits with its context. With
  `keep_prompt` the system prompt and task stay at the head of every window (an agent step
  without its task is a guess), and the context cut is what lies between the head and the window.
  A prompt so long that it and the longest selected step do not fit in one window together keeps
  its last `max_seq_len // 2` tokens (the task, and the end of the system prompt), counted in
  `prompt_cut` and reported with what to change (never dropped silently);
- a single step longer than the window is truncated, with a warning and a count, never dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from critstep.tuner.render import RenderedTrajectory

log = logging.getLogger(__name__)


@dataclass
class Window:
    """One training sequence: token ids and labels (-100 where no loss), not yet shifted."""

    trajectory_id: str
    input_ids: list[int]
    labels: list[int]
    context_cut: int = 0  # tokens of preceding context left out of this window
    truncated_steps: int = 0  # selected steps cut short because they alone exceed the window
    prompt_cut: int = 0  # tokens cut from the start of a prompt too long to keep whole at the head

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        """Tokens that carry loss: a label at position 0 has no preceding token to predict it from."""
        return sum(1 for t in self.labels[1:] if t != -100)


def make_windows(rendered: RenderedTrajectory, max_seq_len: int, keep_prompt: bool = True) -> list[Window]:
    """The windows covering every selected step of `rendered` (none if nothing is selected)."""
    ids = rendered.input_ids
    spans = [rendered.spans[k] for k in rendered.selected]
    if not spans:
        return []
    last_end = spans[-1][1]
    if last_end <= max_seq_len:
        return [Window(rendered.id, ids[:last_end], rendered.labels()[:last_end])]

    head_end = rendered.prompt_end if keep_prompt else 0
    longest = max(e - s for s, e in spans)
    head_start = 0
    if head_end > max_seq_len // 2 and head_end + longest > max_seq_len:
        head_start = head_end - max_seq_len // 2
    head = (head_start, head_end)
    budget = max_seq_len - (head_end - head_start)
    windows: list[Window] = []
    i = 0
    while i < len(spans):
        s_i, e_i = spans[i]
        if e_i - s_i > budget:
            log.warning(
                "trajectory %r: step span of %d tokens exceeds the %d-token window; truncated",
                rendered.id, e_i - s_i, max_seq_len,
            )
            windows.append(_window(rendered, [head, (s_i, s_i + budget)], [(s_i, s_i + budget)], s_i - head_end, 1, head_start))
            i += 1
            continue
        j = i
        while j + 1 < len(spans) and (spans[j + 1][1] <= max_seq_len or spans[j + 1][1] - budget <= s_i):
            j += 1
        end = spans[j][1]
        supervised = spans[i : j + 1]
        if end <= max_seq_len:
            windows.append(_window(rendered, [(0, end)], supervised, 0, 0, 0))
        else:
            start = end - budget
            windows.append(_window(rendered, [head, (start, end)], supervised, start - head_end, 0, head_start))
        i = j + 1
    return windows


def _window(
    rendered: RenderedTrajectory,
    pieces: list[tuple[int, int]],
    supervised: list[tuple[int, int]],
    context_cut: int,
    truncated: int,
    prompt_cut: int,
) -> Window:
    ids: list[int] = []
    labels: list[int] = []
    for start, end in pieces:
        for t in range(start, end):
            ids.append(rendered.input_ids[t])
            labels.append(rendered.input_ids[t] if any(s <= t < e for s, e in supervised) else -100)
    return Window(rendered.id, ids, labels, context_cut, truncated, prompt_cut)
