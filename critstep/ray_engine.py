"""The Ray Data engine of `critstep select --engine ray`: selection scaled out over a Ray cluster.

The input shards become a Ray dataset; read tasks cut each shard into the batches the plain run
uses (see `critstep.sharded`), and an actor pool runs the selector on them with `map_batches`.
Each actor builds the selector once (the embedder, the small LM and the classifier load once per
actor, on a GPU where the actor has one) and calls only the public `Selector.select` on batches
of whole trajectories, so any selector that chooses per trajectory runs unchanged. Only the
selections (ids, step indices, scores) come back; the driver reads the shards again in the same
order and writes each output shard atomically, exactly as the plain run does. Input files must be
readable at the same path from every node (a shared or network file system).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from critstep.errors import ConfigError, CritstepError
from critstep.formats import TrajectoryReader, iter_file
from critstep.selection import Selection
from critstep.trajectory import Trajectory

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'critstep[ray]'"
READ_CPUS = 0.25  # reading and parsing a shard is light next to scoring it
BATCH_BLOCK_BYTES = 64 * 1024  # below a batch of real trajectories: about one batch per block


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local Ray started for this run; "auto" or "ray://host:10001": a cluster
    num_workers: int = 1
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


class RaySelections:
    """Selections computed on Ray, handed out batch by batch in input order.

    Use as a context manager (Ray is started, and stopped if this run started it); call it with
    each batch of the driver's own reading, in order, to get that batch's selections.
    """

    def __init__(self, reader: TrajectoryReader, selector: tuple[str, dict[str, Any]], ratio: float, batch_size: int,
                 options: RayOptions):
        self.reader = reader
        self.selector = selector
        self.ratio = ratio
        self.batch_size = batch_size
        self.options = options
        self._results: Iterator[dict[str, Any]] | None = None
        self._started = False

    def __enter__(self) -> RaySelections:
        ray = import_ray()
        if not ray.is_initialized():
            # Ray's own notes are not the user's business; its errors reach the user as exceptions,
            # turned into one line below.
            init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
            if self.options.address is None:
                # the actors' CPUs, and one for the read tasks (which ask for a quarter each)
                init["num_cpus"] = int(np.ceil(self.options.num_workers * self.options.cpus_per_worker)) + 1
                init["num_gpus"] = int(self.options.num_workers * self.options.num_gpus_per_worker) or None
            else:
                init["address"] = self.options.address
            try:
                ray.init(**init)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot start or reach Ray at {self.options.address or 'a local instance'}: {e}") from None
            self._started = True
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results come back in input order
        # Each batch read from a shard becomes a block of its own: Ray Data would otherwise keep
        # everything one read task yields in one block, and a whole input file would go to one actor.
        context.target_max_block_size = BATCH_BLOCK_BYTES
        context.enable_progress_bars = sys.stderr.isatty()
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans and progress notes are Ray's business
        self._results = self._pipeline(ray)
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        results, self._results = self._results, None
        try:
            if kind is None and results is not None and next(results, None) is not None:
                raise CritstepError("Ray returned more batches than the input holds")
        finally:
            if results is not None:
                results.close()  # before Ray goes: the iterator reports to Ray as it closes
            if self._started:
                import ray

                ray.shutdown()

    def _pipeline(self, ray: Any) -> Iterator[dict[str, Any]]:
        plan = [{"shard": i, "path": str(path), "count": -1 if count is None else count} for i, (path, count) in enumerate(self._shard_counts())]
        ds = ray.data.from_items(plan, override_num_blocks=max(1, len(plan)))
        ds = ds.flat_map(_read_batches, fn_kwargs={"fmt": self.reader.format, "batch_size": self.batch_size}, num_cpus=READ_CPUS)
        gpus = self.options.num_gpus_per_worker
        name, options = self.selector
        if gpus and options.get("device", "unset") is None:
            options = {**options, "device": "cuda"}
        # The selector's spec travels inside the actor class, not as constructor arguments (which
        # Ray would keep in the object store for actor restarts, and warn about).
        actor = type("SelectBatches", (_SelectBatches,), {"spec": (name, options, self.ratio)})
        ds = ds.map_batches(
            actor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=self.options.num_workers),
            num_cpus=self.options.cpus_per_worker,
            num_gpus=gpus or None,
        )
        yield from ds.iter_rows()

    def _shard_counts(self) -> list[tuple[Path, int | None]]:
        """Each input file with how many of its trajectories to read (None: all); with --limit
        the driver finds where the first N end, so both engines cut the same batches."""
        limit = self.reader.limit
        if limit is None:
            return [(path, None) for path in self.reader.files]
        counts: list[tuple[Path, int | None]] = []
        left = limit
        for path in self.reader.files:
            n = sum(1 for _ in itertools.islice(iter_file(path, self.reader.format), left))
            counts.append((path, n))
            left -= n
            if left <= 0:
                break
        return counts

    def __call__(self, batch: list[Trajectory]) -> dict[str, Selection]:
        assert self._results is not None, "use RaySelections as a context manager"
        try:
            row = next(self._results)
        except StopIteration:
            raise CritstepError("Ray returned fewer batches than the input holds") from None
        except Exception as e:  # a task failed: find critstep's own error in Ray's wrapping
            raise _unwrap(e) from None
        if row.get("error"):
            raise CritstepError(row["error"])
        rows = json.loads(row["selections"])
        if [d["id"] for d in rows] != [t.id for t in batch]:
            raise CritstepError(f"Ray batch {row['shard']}/{row['chunk']} does not match the input read by the driver")
        return {d["id"]: Selection(d["id"], d["steps"], d["scores"], {int(k): v for k, v in d["categories"].items()})
                for d in rows if d["steps"] is not None}


def _read_batches(row: dict[str, Any], fmt: str | None, batch_size: int) -> Iterator[dict[str, Any]]:
    """One input shard as rows of `batch_size` pickled trajectories (pickles travel only between
    critstep's own processes; nothing is ever unpickled from a file)."""
    path = Path(row["path"])
    count = None if row["count"] < 0 else int(row["count"])
    try:
        trajectories = itertools.islice(iter_file(path, fmt), count)
        for chunk, start in enumerate(itertools.count(0, batch_size)):
            batch = list(itertools.islice(trajectories, batch_size))
            if not batch:
                return
            yield {"shard": row["shard"], "chunk": chunk, "first": start, "payload": pickle.dumps(batch), "error": ""}
    except CritstepError as e:
        yield {"shard": row["shard"], "chunk": -1, "first": -1, "payload": b"", "error": str(e)}


class _SelectBatches:
    """A Ray actor: builds the selector once, then selects batch after batch."""

    spec: tuple[str, dict[str, Any], float]  # selector name, its options, the ratio

    def __init__(self) -> None:
        from critstep.selector import build_selector

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        name, options, self.ratio = self.spec
        self.selector = build_selector(name, **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "chunk": [], "selections": [], "error": []}
        for shard, chunk, payload, error in zip(batch["shard"], batch["chunk"], batch["payload"], batch["error"], strict=True):
            text, message = "[]", str(error)
            if not message:
                trajectories: list[Trajectory] = pickle.loads(payload)
                try:
                    chosen = self.selector.select(trajectories, ratio=self.ratio)
                    text = json.dumps([_selection_row(t.id, chosen.get(t.id)) for t in trajectories])
                except CritstepError as e:
                    message = str(e)
            out["shard"].append(int(shard))
            out["chunk"].append(int(chunk))
            out["selections"].append(text)
            out["error"].append(message)
        return out


def _selection_row(trajectory_id: str, selection: Selection | None) -> dict[str, Any]:
    if selection is None:  # the selector chose nothing for it (written without a selection)
        return {"id": trajectory_id, "steps": None, "scores": None, "categories": {}}
    scores = None if selection.scores is None else [float(s) for s in selection.scores]
    return {"id": trajectory_id, "steps": list(selection.steps), "scores": scores,
            "categories": {str(k): v for k, v in selection.categories.items()}}


def _unwrap(error: BaseException) -> CritstepError:
    """critstep's own error inside Ray's task-error wrapping, or one line saying what Ray said."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CritstepError):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__ or current.__context__
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CritstepError(f"the Ray run failed: {first_line}")
