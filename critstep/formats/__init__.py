"""Read trajectories in the formats agent datasets ship in; write selections back in kind.

Formats: `openai` (records with `messages`, or tau-bench's `traj` list), `sharegpt`
(`conversations` with `from`/`value` or `role`/`content`), `react` (text logs with `> ` agent
lines), `sciworld` (SwiftSage `history` lists) and `adp` (Agent Data Protocol). Files may be
JSONL, a JSON array, a JSON object of named records or Parquet, plain or gzip/zstd-compressed; a
source may be a directory or a glob of such shards (see `critstep.streams`). Reading streams
record by record. Detection looks at each record; `format=` overrides it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from critstep.errors import InputError
from critstep.formats import adp, openai, sciworld, sharegpt, textlog
from critstep.io import Record, expand_object, iter_records, write_jsonl
from critstep.selection import Selection
from critstep.trajectory import Origin, Trajectory

READERS: dict[str, ModuleType] = {"openai": openai, "sharegpt": sharegpt, "react": textlog, "sciworld": sciworld, "adp": adp}
WRITERS: dict[str, ModuleType] = {"openai": openai, "sharegpt": sharegpt, "adp": adp}
FORMATS = tuple(READERS)

ErrorHandler = Callable[[InputError], None]


def detect_format(value: Any) -> str | None:
    for name, module in READERS.items():
        if module.matches(value):
            return name
    return None


def read_trajectories(
    source: str | Path, format: str | None = None, on_error: ErrorHandler | None = None, limit: int | None = None
) -> list[Trajectory]:
    """Read every trajectory of `source` (a file, a directory or a glob of shards; see `critstep.streams`).

    Without `on_error` the first bad record raises an `InputError` naming file and line; with it,
    each error is handed over and the record skipped (what `critstep validate` uses to list them all).
    """
    return list(TrajectoryReader(source, format, on_error, limit))


class TrajectoryReader:
    """Trajectories of a source as a stream, shard by shard, with ids checked unique across it.

    Iterating yields every trajectory (at most `limit`); `shards()` yields each input file with
    an iterator over its trajectories, for writing one output shard per input shard.
    """

    def __init__(self, source: str | Path, format: str | None = None, on_error: ErrorHandler | None = None, limit: int | None = None):
        from critstep.streams import expand_source

        if format is not None and format not in READERS:
            raise InputError(f"unknown format {format!r} (known: {', '.join(FORMATS)})", source)
        self.source = source
        self.files = expand_source(source)
        self.format = format
        self.on_error = on_error
        self.limit = limit
        self.count = 0
        self.ids = IdRegistry()

    def __iter__(self) -> Iterator[Trajectory]:
        for _, trajectories in self.shards():
            yield from trajectories

    def shards(self) -> Iterator[tuple[Path, Iterator[Trajectory]]]:
        """Each input file with its trajectories; an input without a single record is an error
        (unless errors are being collected: then the caller reports what it got)."""
        for path in self.files:
            if self.done:
                return
            yield path, self._read(path)
        if self.count == 0 and self.on_error is None:
            raise InputError("no trajectories: the input holds no records", self.source)

    @property
    def done(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def _read(self, path: Path) -> Iterator[Trajectory]:
        for traj in iter_file(path, self.format, self.on_error):
            if self.done:
                return
            if not self.ids.add(traj.id):
                first = self._first_location(traj)
                if first is not None:
                    where = f"line {first[1]}" if first[0] == str(path) else f"{first[0]}:{first[1]}"
                    error = InputError(f"duplicate trajectory id {traj.id!r} (first on {where})", path, traj.origin.line if traj.origin else None)
                    if self.on_error is None:
                        raise error
                    self.on_error(error)
                    continue
            self.count += 1
            yield traj

    def _first_location(self, duplicate: Trajectory) -> tuple[str, int] | None:
        """Where an id seen before first occurred (the input is read again up to here: duplicates
        are rare, and this keeps memory at one hash per id); None for a hash collision."""
        assert duplicate.origin is not None
        for path in self.files:
            for traj in iter_file(path, self.format, lambda e: None):
                assert traj.origin is not None
                if (traj.origin.path, traj.origin.line) == (duplicate.origin.path, duplicate.origin.line):
                    return None
                if traj.id == duplicate.id:
                    return traj.origin.path, traj.origin.line
        return None


class IdRegistry:
    """The trajectory ids seen so far, as 64-bit hashes: a sorted array of 8 bytes per id plus a
    set of the last `RECENT`, merged into the array when full. Measured (benchmarks/scale.py, 1M
    ids): 9 bytes per id (28 at the peak of a merge) against 161 for a set of the id strings, i.e.
    ~90 MB instead of ~1.6 GB for 10M trajectories."""

    RECENT = 1 << 16

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()

    def add(self, trajectory_id: str) -> bool:
        """Record an id; False if (its hash) was seen before."""
        key = int.from_bytes(hashlib.blake2b(trajectory_id.encode(), digest_size=8).digest(), "little")
        if key in self._recent:
            return False
        if self._sorted.size:
            i = int(np.searchsorted(self._sorted, np.uint64(key)))
            if i < self._sorted.size and int(self._sorted[i]) == key:
                return False
        self._recent.add(key)
        if len(self._recent) >= self.RECENT:
            recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            self._sorted = np.sort(np.concatenate([self._sorted, recent]))
            self._recent.clear()
        return True

    def __len__(self) -> int:
        return self._sorted.size + len(self._recent)


def iter_file(path: str | Path, format: str | None = None, on_error: ErrorHandler | None = None) -> Iterator[Trajectory]:
    """The trajectories of one file, streamed, each checked; no check of ids across records."""
    for n, rec in enumerate(_records(path, format, on_error)):
        try:
            traj = _parse(rec, path, format, fallback_id=rec.key or f"{_stem(path)}/{n}")
            _check_recorded_selection(traj, path, rec.line)
        except InputError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        yield traj


def _stem(path: str | Path) -> str:
    from critstep.streams import _split_suffix

    stem, data, _ = _split_suffix(Path(path))
    return stem if data else Path(path).stem


def _records(path: str | Path, format: str | None, on_error: ErrorHandler | None) -> Iterator[Record]:
    records = iter_records(path, on_error)
    head = list(itertools.islice(records, 2))
    if len(head) == 1 and isinstance(head[0].value, dict):
        only = head[0].value
        fmt = format or detect_format(only)
        # One record, or an object mapping names to records (ReAct prompts, SwiftSage logs)?
        if fmt is None or not READERS[fmt].matches(only):
            values = list(only.values())
            if values and all(detect_format(v) for v in values):
                yield from expand_object(path)
                return
    yield from head
    yield from records


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
        getattr(writer, "place_selection", dict.update)(record, {k: trajectory.metadata[k] for k in SELECTION_KEYS if k in trajectory.metadata})
        return record
    record = writer.render(plain, message_flags(trajectory, selection.steps))
    chosen: dict[str, Any] = {"critical_steps": list(selection.steps)}
    if selection.scores is not None:
        chosen["step_scores"] = [round(float(s), 6) for s in selection.scores]
    getattr(writer, "place_selection", dict.update)(record, chosen)
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
