"""Run selectors with their wall time, or collect selections made elsewhere.

Each result knows what it spent: measured seconds on a device (priced later by `costs`) and the
dollars its oracle calls cost. Collected predictions have neither unless the caller says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.errors import InputError
from critstep.formats import read_trajectories
from critstep.io import read_records
from critstep.labels import read_labels, selections_from_labels
from critstep.selection import Selection, selected_steps
from critstep.trajectory import Trajectory


@dataclass
class SelectorResult:
    """One selector's selections on the compared trajectories and what they cost to make."""

    name: str
    selections: dict[str, Selection]
    n_trajectories: int
    seconds: float | None = None
    device: str | None = None
    oracle_usd: float = 0.0
    oracle_calls: int = 0
    oracle_share: float = 0.0
    notes: list[str] = field(default_factory=list)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def read_predictions(path: str | Path, trajectories: Sequence[Trajectory]) -> dict[str, Selection]:
    """Selections from a label file (`critical` lists) or from trajectories written by `select`.

    Every trajectory of the file must carry a selection (`critical_steps` or per-message flags);
    one that does not is an error naming its line, since silently reading it as "nothing
    selected" would skew every metric.
    """
    records = read_records(path)
    if records and isinstance(records[0].value, dict) and "critical" in records[0].value and "n_steps" in records[0].value:
        return selections_from_labels(read_labels(path, trajectories))
    known = {t.id: t for t in trajectories}
    out: dict[str, Selection] = {}
    for t in read_trajectories(path):
        steps = selected_steps(t)
        line = t.origin.line if t.origin else None
        if steps is None:
            raise InputError(f"trajectory {t.id!r} carries no selection (no critical_steps or per-message weight/loss)", path, line)
        if t.id in known and known[t.id].n_steps != t.n_steps:
            raise InputError(f"trajectory {t.id!r} has {t.n_steps} steps here but {known[t.id].n_steps} in the compared data", path, line)
        scores = t.metadata.get("step_scores")
        out[t.id] = Selection(t.id, steps, scores=[float(s) for s in scores] if isinstance(scores, list) else None)
    return out


def restrict(selections: Mapping[str, Selection], ids: Sequence[str], name: str, path: str | Path | None = None) -> dict[str, Selection]:
    """The selections of exactly `ids`; a missing one is an error, not an empty selection."""
    missing = [i for i in ids if i not in selections]
    if missing:
        raise InputError(f"{name} has no selection for {len(missing)} of the {len(ids)} labeled trajectories (first: {missing[0]!r})", path)
    return {i: selections[i] for i in ids}
