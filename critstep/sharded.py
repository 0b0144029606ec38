"""Selection over a stream: batches of whole trajectories in, one output shard per input shard out.

Memory holds one batch of trajectories (plus a hash per id), whatever the size of the input.
Both engines (plain and Ray) cut every input shard into the same batches of `batch_size`
consecutive trajectories: a selector may compute its features per batch (the distilled selector
embeds a batch's texts together, and bf16 padding moves scores slightly), so equal batches are
what makes the two engines' selections equal bit for bit.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from critstep.formats import TrajectoryReader, render_record
from critstep.io import claim_output_dir, write_jsonl
from critstep.selection import Selection
from critstep.streams import is_data_file, shard_name, source_root
from critstep.trajectory import Trajectory

DEFAULT_BATCH_SIZE = 64
SHARDS_KIND = "selection shards"

SelectBatch = Callable[[list[Trajectory]], dict[str, Selection]]


@dataclass
class Totals:
    """What a run read and chose, for the summary line."""

    trajectories: int = 0
    steps: int = 0
    chosen: int = 0
    envs: Counter = field(default_factory=Counter)
    outputs: list[Path] = field(default_factory=list)

    def add(self, trajectory: Trajectory, selection: Selection | None) -> None:
        self.trajectories += 1
        self.steps += trajectory.n_steps
        self.chosen += len(selection.steps) if selection else 0
        self.envs[trajectory.env] += 1


def is_directory_output(out: Path) -> bool:
    """`--out` names a directory of shards unless it is an existing non-directory (a file, a
    device) or ends like a data file (`.jsonl`, `.json`, with `.gz`/`.zst`)."""
    if out.exists():
        return out.is_dir()
    return not is_data_file(out)


def batches(trajectories: Iterable[Trajectory], size: int) -> Iterator[list[Trajectory]]:
    iterator = iter(trajectories)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def select_to(reader: TrajectoryReader, out: Path, select_batch: SelectBatch, batch_size: int | None) -> Totals:
    """Select every trajectory of `reader` and write them, with their selections, to `out`.

    `batch_size=None` hands the selector the whole input at once (selectors whose choice for one
    trajectory depends on the others: the cascade's budget, the oracle's cost cap).
    """
    totals = Totals()
    if batch_size is None:
        everything = list(reader)
        selections = select_batch(everything)
        shards = [(Path(path), list(group)) for path, group in itertools.groupby(everything, key=lambda t: t.origin.path if t.origin else "")]
        chosen = lambda ts: iter([(ts, selections)])  # noqa: E731
    else:
        shards = reader.shards()
        chosen = lambda ts: ((batch, select_batch(batch)) for batch in batches(ts, batch_size))  # noqa: E731

    def records(trajectories: Iterable[Trajectory]) -> Iterator[dict]:
        for batch, selections in chosen(trajectories):
            for t in batch:
                selection = selections.get(t.id)
                totals.add(t, selection)
                yield render_record(t, selection)

    if is_directory_output(out):
        claim_output_dir(out, SHARDS_KIND)
        root = source_root(reader.source)
        for path, trajectories in shards:
            target = out / shard_name(path, root)
            write_jsonl(target, records(trajectories))
            totals.outputs.append(target)
    else:
        write_jsonl(out, (r for _, trajectories in shards for r in records(trajectories)))
        totals.outputs.append(out)
    return totals
