"""From a selection file to training windows: read, split, render, window, count.

The held-out split is by a hash of the trajectory id, so it is stable across runs, resumes and
machines, and independent of the file's order.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from critstep.errors import InputError
from critstep.formats import read_trajectories
from critstep.selection import selected_steps
from critstep.trajectory import Trajectory
from critstep.tuner.render import RenderedTrajectory, render_trajectory
from critstep.tuner.windows import Window, make_windows

log = logging.getLogger(__name__)


@dataclass
class DataStats:
    """What the tuner trains on, and what it had to leave out or cut (written to data_stats.json)."""

    trajectories: int = 0
    skipped_no_selected_steps: int = 0
    steps: int = 0
    selected_steps: int = 0
    tokens: int = 0  # rendered tokens of the used trajectories
    window_tokens: int = 0  # tokens the model reads (after cutting tails and windowing)
    supervised_tokens: int = 0
    windows: int = 0
    windowed_trajectories: int = 0  # trajectories that needed more than one window or a cut
    context_tokens_cut: int = 0  # summed over windows: tokens between a window's kept prompt and its start
    truncated_steps: int = 0
    windows_with_prompt_cut: int = 0  # windows that keep only the end of a prompt longer than half the window

    def add(self, rendered: RenderedTrajectory, windows: Sequence[Window]) -> None:
        self.trajectories += 1
        self.steps += len(rendered.spans)
        self.selected_steps += len(rendered.selected)
        self.tokens += len(rendered.input_ids)
        self.windows += len(windows)
        self.window_tokens += sum(len(w) for w in windows)
        self.supervised_tokens += sum(w.n_supervised for w in windows)
        self.context_tokens_cut += sum(w.context_cut for w in windows)
        self.truncated_steps += sum(w.truncated_steps for w in windows)
        self.windows_with_prompt_cut += sum(1 for w in windows if w.prompt_cut)
        if len(windows) > 1 or any(w.context_cut or w.truncated_steps for w in windows):
            self.windowed_trajectories += 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_selection(source: str | Path | Sequence[Trajectory]) -> list[Trajectory]:
    """Trajectories that carry a selection; a file without one is an error naming its line."""
    trajectories = read_trajectories(source) if isinstance(source, (str, Path)) else list(source)
    for t in trajectories:
        if selected_steps(t) is None:
            path = t.origin.path if t.origin else source if isinstance(source, (str, Path)) else None
            line = t.origin.line if t.origin else None
            raise InputError(
                f"trajectory {t.id!r} records no selection (no critical_steps or per-message weight): "
                "run `critstep select` first",
                path,
                line,
            )
    return trajectories


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by `key` and `seed`: splits that do not move when data is added."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


def is_eval(trajectory_id: str, fraction: float, seed: int) -> bool:
    return stable_fraction(trajectory_id, seed) < fraction


def split(trajectories: Sequence[Trajectory], fraction: float, seed: int, eval_max: int) -> tuple[list[Trajectory], list[Trajectory]]:
    """(train, eval): a stable hash split; eval capped at `eval_max`, the rest returned to train."""
    train: list[Trajectory] = []
    held: list[Trajectory] = []
    for t in trajectories:
        (held if fraction > 0 and is_eval(t.id, fraction, seed) else train).append(t)
    if len(held) > eval_max:
        train.extend(held[eval_max:])
        held = held[:eval_max]
    return train, held


def render_all(trajectories: Sequence[Trajectory], tokenizer: Any, chat_template: str | None) -> list[RenderedTrajectory]:
    out = []
    for t in trajectories:
        steps = selected_steps(t) or []
        if not steps:
            continue
        out.append(render_trajectory(t, steps, tokenizer, chat_template))
    return out


def build_windows(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    chat_template: str | None,
    max_seq_len: int,
    keep_prompt: bool,
) -> tuple[list[Window], DataStats]:
    stats = DataStats()
    windows: list[Window] = []
    for t in trajectories:
        if not selected_steps(t):
            stats.skipped_no_selected_steps += 1
            continue
        rendered = render_trajectory(t, selected_steps(t) or [], tokenizer, chat_template)
        ws = make_windows(rendered, max_seq_len, keep_prompt)
        stats.add(rendered, ws)
        windows.extend(ws)
    if stats.skipped_no_selected_steps:
        log.warning("%d trajectories have no selected step and carry no loss; skipped", stats.skipped_no_selected_steps)
    if stats.windows_with_prompt_cut:
        log.warning("%d windows keep only the last %d tokens of their prompt (system prompt + task), which with a step "
                    "does not fit in max_seq_len %d: raise max_seq_len to keep whole prompts",
                    stats.windows_with_prompt_cut, max_seq_len // 2, max_seq_len)
    return windows, stats


def supervised_texts(rendered: RenderedTrajectory, tokenizer: Any) -> list[dict[str, Any]]:
    """The decoded text of each supervised span, for `--dump-supervised`."""
    return [
        {"step": k, "tokens": rendered.spans[k][1] - rendered.spans[k][0],
         "text": tokenizer.decode(rendered.input_ids[slice(*rendered.spans[k])])}
        for k in rendered.selected
    ]
