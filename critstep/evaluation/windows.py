"""Context windows for evaluating every step of a rendered trajectory with few forward passes.

One forward pass over a window scores the gold turns of all its steps (teacher forcing) and leaves
the KV cache from which each of those steps is generated: step k's prompt is the window up to the
start of its turn. A trajectory that fits in `max_len` tokens is one window, so every step sees
its whole history. A longer one is cut the way the tuner cuts its training windows (the system
prompt and task kept at the head when they take at most half the window, the most recent history
after them), with one difference: the tuner only needs each selected step inside a window, while
an evaluated step is generated from its window and so needs history before it. Every step here
gets at least half of the window's tail budget of history (or all the history there is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from critstep.tuner.render import RenderedTrajectory


@dataclass
class EvalWindow:
    """Token positions (into the rendered trajectory) read in one forward pass, and its steps.

    `spans[i]` is step `steps[i]`'s turn in window coordinates; a turn longer than the window's
    room is cut at the window's end (`truncated` counts such steps, as the tuner does).
    """

    trajectory_id: str
    positions: list[int]
    steps: list[int]
    spans: list[tuple[int, int]]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.positions)


def eval_windows(rendered: RenderedTrajectory, max_len: int, steps: Sequence[int] | None = None) -> list[EvalWindow]:
    """Windows of at most `max_len` tokens covering every step in `steps` (default: all) once."""
    wanted = sorted(range(len(rendered.spans)) if steps is None else set(steps))
    if not wanted:
        return []
    spans = rendered.spans
    last_end = spans[wanted[-1]][1]
    if last_end <= max_len:
        return [_window(rendered, list(range(last_end)), wanted, max_len)]

    head = rendered.prompt_end if rendered.prompt_end <= max_len // 2 else 0
    budget = max_len - head
    windows: list[EvalWindow] = []
    i = 0
    while i < len(wanted):
        start_i = spans[wanted[i]][0]
        history = min(budget // 2, start_i - head)  # what step i must see before its turn
        j = i
        while j + 1 < len(wanted) and max(spans[wanted[j + 1]][1], max_len) - budget <= start_i - history:
            j += 1
        end = spans[wanted[j]][1]
        if end <= max_len:
            positions = list(range(end))
        else:
            start = max(head, min(end - budget, start_i - history))
            end = min(end, start + budget)
            positions = list(range(head)) + list(range(start, end))
        windows.append(_window(rendered, positions, wanted[i : j + 1], max_len))
        i = j + 1
    return windows


def _window(rendered: RenderedTrajectory, positions: list[int], steps: list[int], max_len: int) -> EvalWindow:
    where = {p: w for w, p in enumerate(positions)}
    spans: list[tuple[int, int]] = []
    truncated = 0
    for k in steps:
        start, end = rendered.spans[k]
        w_start = where[start]
        w_end = w_start + (end - start)
        if w_end > len(positions):
            truncated += 1
            w_end = len(positions)
        spans.append((w_start, w_end))
    return EvalWindow(rendered.id, positions, steps, spans, truncated)
