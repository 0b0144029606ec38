"""Read trajectories in the formats agent datasets ship in; write selections back in kind.

Formats: `openai` (records with `messages`, or tau-bench's `traj` list), `sharegpt`
(`conversations` with `from`/`value` or `role`/`content`), `react` (text logs with `> ` agent
lines) and `sciworld` (SwiftSage `history` lists). Files may be JSONL, a JSON array, or a JSON
object of named records. Detection looks at each record; `format=` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from critstep.errors import InputError
from critstep.formats import openai, sciworld, sharegpt, textlog
from critstep.io import Record, expand_object, read_records, write_jsonl
from critstep.selection import Selection
from critstep.trajectory import Origin, Trajectory

READERS: dict[str, ModuleType] = {"openai": openai, "sharegpt": sharegpt, "react": textlog, "sciworld": sciworld}
WRITERS: dict[str, ModuleType] = {"openai": openai, "sharegpt": sharegpt}
FORMATS = tuple(READERS)

ErrorHandler = Callable[[InputError], None]


def detect_format(value: Any) -> str | None:
    for name, module in READERS.items():
        if module.matches(value):
            return name
    return None


def read_trajectories(path: str | Path, format: str | None = None, on_error: ErrorHandler | None = None) -> list[Trajectory]:
    """Read every trajectory of `path`.

    Without `on_error` the first bad record raises an `InputError` naming file and line; with it,
    each error is handed over and the record skipped (what `critstep validate` uses to list them all).
    """
    if format is not None and format not in READERS:
        raise InputError(f"unknown format {format!r} (known: {', '.join(FORMATS)})", path)
    records = _records(path, format, on_error)
    if not records and on_error is None:
        raise InputError("no trajectories: the file holds no records", path)
    out: list[Trajectory] = []
    seen: dict[str, int] = {}
    for n, rec in enumerate(records):
        try:
            traj = _parse(rec, path, format, fallback_id=rec.key or f"{Path(path).stem}/{n}")
            if traj.id in seen:
                raise InputError(f"duplicate trajectory id {traj.id!r} (first on line {seen[traj.id]})", path, rec.line)
            seen[traj.id] = rec.line
            _check_recorded_selection(traj, path, rec.line)
        except InputError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        out.append(traj)
    return out


def _records(path: str | Path, format: str | None, on_error: ErrorHandler | None) -> list[Record]:
    records = read_records(path, on_error)
    if len(records) == 1 and isinstance(records[0].value, dict):
        only = records[0].value
        fmt = format or detect_format(only)
        # One record, or an object mapping names to records (ReAct prompts, SwiftSage logs)?
        if fmt is None or not READERS[fmt].matches(only):
            values = list(only.values())
            if values and all(detect_format(v) for v in values):
                return expand_object(path)
    return records


def _parse(rec: Record, path: str | Path, format: str | None, fallback_id: str) -> Trajectory:
    fmt = format or detect_format(rec.value)
    if fmt is None:
        kind = f"object with keys {sorted(rec.value)[:6]}" if isinstance(rec.value, dict) else type(rec.value).__name__
        raise InputError(f"unknown format: {kind} is none of {', '.join(FORMATS)} (use --format to force one)", path, rec.line)
    module = READERS[fmt]
    if not module.matches(rec.value):
        raise InputError(f"record is not in {fmt} format", path, rec.line)
    return module.parse(rec.value, Origin(fmt, str(path), rec.line), fallback_id)


def _check_recorded_selection(traj: Trajectory, path: str | Path, line: int) -> None:
    recorded = traj.metadata.get("critical_steps")
    if recorded is None:
        return
    n = traj.n_steps
    if not isinstance(recorded, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in recorded):
        raise InputError("critical_steps must be a list of integers", path, line)
    bad = [i for i in recorded if not 0 <= i < n]
    if bad:
        raise InputError(f"critical_steps {bad} out of range for {n} steps (0-based)", path, line)


def message_flags(trajectory: Trajectory, steps: Sequence[int]) -> list[bool]:
    """Per-message training flags: true on the selected steps, false on every other message."""
    chosen = set(steps)
    step_of = {mi: k for k, mi in enumerate(trajectory.step_message_indices)}
    return [i in step_of and step_of[i] in chosen for i in range(len(trajectory.messages))]


SELECTION_KEYS = ("critical_steps", "step_scores")


def render_record(trajectory: Trajectory, selection: Selection | None = None, format: str | None = None) -> dict[str, Any]:
    """The record to write: in the trajectory's own format where writable, else OpenAI.

    The selection keys always come last, so writing what was read reproduces the file.
    """
    fmt = format or (trajectory.origin.format if trajectory.origin else "openai")
    writer = WRITERS.get(fmt, openai)
    metadata = {k: v for k, v in trajectory.metadata.items() if k not in SELECTION_KEYS}
    plain = replace(trajectory, metadata=metadata)
    if selection is None:
        record = writer.render(plain, None)
        record.update({k: trajectory.metadata[k] for k in SELECTION_KEYS if k in trajectory.metadata})
        return record
    record = writer.render(plain, message_flags(trajectory, selection.steps))
    record["critical_steps"] = list(selection.steps)
    if selection.scores is not None:
        record["step_scores"] = [round(float(s), 6) for s in selection.scores]
    return record


def write_trajectories(
    path: str | Path,
    trajectories: Sequence[Trajectory],
    selections: dict[str, Selection] | None = None,
    format: str | None = None,
) -> None:
    """Write JSONL atomically, each trajectory with its selection (if given) as flags."""
    if format is not None and format not in WRITERS:
        raise InputError(f"cannot write format {format!r} (writable: {', '.join(WRITERS)})", path)
    write_jsonl(path, (render_record(t, (selections or {}).get(t.id), format) for t in trajectories))
