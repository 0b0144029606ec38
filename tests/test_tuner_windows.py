"""Windowing: every selected step trained once, with as much preceding context as fits."""

from __future__ import annotations

import logging

from critstep.tuner.render import RenderedTrajectory
from critstep.tuner.windows import make_windows


def _rendered(n_steps: int, prompt: int = 10, context: int = 6, step: int = 4, selected=None, long_step=None) -> RenderedTrajectory:
    """A synthetic trajectory: `prompt` tokens, then (context, step) blocks; token ids = positions."""
    spans, pos = [], prompt
    for k in range(n_steps):
        pos += context
        length = long_step[1] if long_step and long_step[0] == k else step
        spans.append((pos, pos + length))
        pos += length
    return RenderedTrajectory("t", list(range(pos + context)), spans, selected or [], prompt_end=spans[0][0])


def _supervised(window) -> set[int]:
    return {tok for tok, label in zip(window.input_ids, window.labels, strict=True) if label != -100}


def test_short_trajectory_is_one_window_cut_after_the_last_selected_step():
    r = _rendered(5, selected=[1, 3])
    [w] = make_windows(r, max_seq_len=1000)
    assert w.input_ids == r.input_ids[: r.spans[3][1]]
    assert _supervised(w) == set(range(*r.spans[1])) | set(range(*r.spans[3]))
    assert w.context_cut == 0


def test_long_trajectory_every_selected_step_once_with_the_prompt_kept():
    r = _rendered(40, selected=[0, 5, 6, 20, 39])
    windows = make_windows(r, max_seq_len=64)
    assert all(len(w) <= 64 for w in windows)
    covered = [tok for w in windows for tok in _supervised(w)]
    expected = [tok for k in r.selected for tok in range(*r.spans[k])]
    assert sorted(covered) == sorted(expected)  # each selected token exactly once
    for w in windows:
        assert w.input_ids[:16] == r.input_ids[:16]  # system prompt + task (prompt_end = 16) at the head
    cut = [w for w in windows if w.context_cut]
    assert cut and sum(w.context_cut for w in windows) > 0
    # a cut window is full: as much context as fits
    assert all(len(w) == 64 for w in cut)


def test_context_cut_is_counted_exactly():
    r = _rendered(10, prompt=10, context=6, step=4, selected=[9])
    [w] = make_windows(r, max_seq_len=40, keep_prompt=False)
    end = r.spans[9][1]
    assert w.input_ids == r.input_ids[end - 40 : end]
    assert w.context_cut == end - 40


def test_step_longer_than_the_window_is_truncated_and_counted(caplog):
    r = _rendered(4, selected=[1, 2], long_step=(2, 100))
    with caplog.at_level(logging.WARNING):
        windows = make_windows(r, max_seq_len=48)
    assert sum(w.truncated_steps for w in windows) == 1
    assert "truncated" in caplog.text
    assert all(len(w) <= 48 for w in windows)
    covered = set().union(*(_supervised(w) for w in windows))
    assert set(range(*r.spans[1])) <= covered  # the other step is still trained in full
    assert r.spans[2][0] in covered  # the long one from its start


def test_nothing_selected_gives_no_window():
    assert make_windows(_rendered(3, selected=[]), max_seq_len=64) == []


def test_a_prompt_longer_than_half_the_window_is_kept_when_the_steps_fit_beside_it():
    r = _rendered(12, prompt=40, context=6, step=4, selected=[2, 6, 11])  # prompt_end = 46 of a 64-token window
    windows = make_windows(r, max_seq_len=64)
    covered = [tok for w in windows for tok in _supervised(w)]
    assert sorted(covered) == sorted(tok for k in r.selected for tok in range(*r.spans[k]))
    for w in windows:
        assert len(w) <= 64
        assert w.input_ids[: r.prompt_end] == r.input_ids[: r.prompt_end]  # the task is at the head of every window


def test_a_prompt_that_leaves_no_room_for_a_step_keeps_its_end_and_is_counted():
    r = _rendered(12, prompt=50, context=6, step=10, selected=[2, 11])  # prompt_end 56; 56 + 10 > 64
    windows = make_windows(r, max_seq_len=64)
    cut = [w for w in windows if w.prompt_cut]
    assert cut, "the prompt must not be dropped"
    for w in cut:
        assert len(w) <= 64
        assert w.prompt_cut == 56 - 32
        assert w.input_ids[:32] == r.input_ids[24:56]  # the prompt's last half-window: the task
    covered = [tok for w in windows for tok in _supervised(w)]
    assert sorted(covered) == sorted(tok for k in r.selected for tok in range(*r.spans[k]))
