"""The oracle as a `Selector`: the teacher's labels, through the same interface as every selector."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from critstep.errors import CritstepError
from critstep.selection import DEFAULT_RATIO, Selection
from critstep.selector.base import Selector
from critstep.selector.oracle.config import OracleConfig
from critstep.selector.oracle.labeler import OracleLabeler
from critstep.selector.oracle.results import LabelRun
from critstep.trajectory import Trajectory

log = logging.getLogger("critstep.oracle")


class OracleSelector(Selector):
    """Selects what the LLM labels critical; takes `OracleConfig`'s fields as keyword arguments.

    Answers come from the persistent cache when they can. A trajectory the oracle could not label
    (invalid answer, failed request, budget reached) gets no `Selection`: the teacher has no
    opinion on it, and `last_run` says why, so a cascade can send it to another selector.
    An API stop (bad key, no quota) raises.
    """

    name = "oracle"
    streamable = False

    def __init__(self, **options: Any):
        self.config = OracleConfig(**options)
        self.last_run: LabelRun | None = None

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        labeler = OracleLabeler(dataclasses.replace(self.config, ratio=ratio))
        run = labeler.label(trajectories)
        self.last_run = run
        if run.fatal:
            raise CritstepError(run.stopped or "the API stopped the run")
        missing = len(run.failed) + len(run.unlabeled)
        if missing:
            log.warning("oracle: %d of %d trajectories have no labels (%s)", missing, len(trajectories), run.stopped or "see last_run.failed")
        return {tid: labels.to_selection() for tid, labels in run.labels.items()}
